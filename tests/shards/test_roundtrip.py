"""Round trip of the quirky folder: shard it, read it back with webdataset, GNU tar, the sidecar.

Every valid image must come back exactly once, byte-identical, with its label and metadata;
every other entry must be in the manifest's ``skipped`` with its reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from shards.format import INDEX_DTYPE, read_index
from shards.manifest import Manifest

META_FIELDS = {
    "path", "class", "label", "format", "width", "height", "channels", "sha256", "source_bytes"
}  # fmt: skip


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(built: Any) -> Manifest:
    return Manifest.load(built.out)


def _urls(built: Any) -> list[str]:
    return [str(built.out / s.url) for s in _manifest(built).shards]


def _check_sample(quirky: Any, key: str, files: dict[str, bytes]) -> str:
    """Check one sample's members against its source; returns the source path."""
    assert "." not in key and "/" not in key
    image_exts = set(files) - {"cls", "json"}
    assert {"cls", "json"} <= set(files) and len(image_exts) == 1, (key, sorted(files))
    ext = image_exts.pop()
    meta = json.loads(files["json"])
    assert set(meta) == META_FIELDS
    rel = meta["path"]
    exp = quirky.images[rel]
    source = (quirky.root / rel).read_bytes()
    assert files[ext] == source, f"{rel}: stored bytes differ from the source"
    assert ext == exp.fmt == meta["format"], rel
    assert files["cls"] == str(exp.label).encode("ascii")
    assert meta["label"] == exp.label
    assert meta["class"] == quirky.classes[exp.label]
    assert (meta["width"], meta["height"], meta["channels"]) == (
        exp.width, exp.height, exp.channels
    ), rel  # fmt: skip
    assert meta["sha256"] == sha256(source)
    assert meta["source_bytes"] == len(source)
    return str(rel)


def test_webdataset_sees_exactly_our_samples(quirky: Any, quirky_built: Any) -> None:
    wds = pytest.importorskip("webdataset")
    dataset = wds.WebDataset(_urls(quirky_built), shardshuffle=False)
    keys: list[str] = []
    paths: list[str] = []
    for sample in dataset:
        key = sample["__key__"]
        files = {k: v for k, v in sample.items() if not k.startswith("__")}
        paths.append(_check_sample(quirky, key, files))
        keys.append(key)
    assert sorted(paths) == sorted(quirky.images), "every valid image exactly once"
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert len(keys) == _manifest(quirky_built).num_samples


def test_gnu_tar_extracts_every_image_once_byte_identical(
    quirky: Any, quirky_built: Any, tmp_path: Path
) -> None:
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("GNU tar is not installed")
    by_key: dict[str, dict[str, bytes]] = defaultdict(dict)
    for i, url in enumerate(_urls(quirky_built)):
        dest = tmp_path / f"x{i}"
        dest.mkdir()
        subprocess.run([tar, "-xf", url, "-C", str(dest)], check=True, capture_output=True)
        listing = subprocess.run(
            [tar, "--numeric-owner", "-tvf", url], check=True, capture_output=True, text=True
        ).stdout.splitlines()
        assert listing and all(line.startswith("-r--r--r-- 0/0 ") for line in listing)
        assert all(" 1970-01-01 00:00 " in line for line in listing)
        for f in sorted(dest.iterdir()):
            key, ext = f.name.split(".", 1)
            assert ext not in by_key[key], f"{f.name} in two shards"
            by_key[key][ext] = f.read_bytes()
    paths = [_check_sample(quirky, key, files) for key, files in sorted(by_key.items())]
    assert sorted(paths) == sorted(quirky.images)


def test_every_other_entry_is_skipped_with_its_reason(quirky: Any, quirky_built: Any) -> None:
    skipped = {s["path"]: s["reason"] for s in _manifest(quirky_built).skipped}
    assert set(skipped) == set(quirky.skipped)
    for path, prefix in quirky.skipped.items():
        assert skipped[path].startswith(prefix), (path, skipped[path])


def test_nothing_is_lost_silently(quirky: Any, quirky_built: Any) -> None:
    """Every entry under the root is sharded, skipped, or inside a skipped folder."""
    manifest = _manifest(quirky_built)
    skipped = {s["path"] for s in manifest.skipped}
    stored = set(quirky.images)
    for dirpath, dirnames, filenames in os.walk(quirky.root):
        for name in dirnames + filenames:
            rel = Path(dirpath, name).relative_to(quirky.root).as_posix()
            parents = {p.as_posix() for p in Path(rel).parents}
            if Path(dirpath, name).is_dir() and not Path(dirpath, name).is_symlink():
                continue
            assert rel in stored or rel in skipped or parents & skipped, rel


def test_cmyk_and_gray_decode_to_three_channels(quirky: Any, quirky_built: Any) -> None:
    wds = pytest.importorskip("webdataset")
    seen = set()
    for sample in wds.WebDataset(_urls(quirky_built), shardshuffle=False):
        meta = json.loads(sample["json"])
        if meta["channels"] in (1, 4):
            data = sample[meta["format"]]
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert pixels is not None and pixels.shape == (meta["height"], meta["width"], 3)
            seen.add(meta["path"])
    assert {"n00000001/cmyk.jpg", "n00000001/gray.jpg", "n00000001/GRAY.PNG"} <= seen


def test_sidecar_rows_slice_exactly_the_image_bytes(quirky: Any, quirky_built: Any) -> None:
    manifest = _manifest(quirky_built)
    total = 0
    for entry in manifest.shards:
        data = (quirky_built.out / entry.url).read_bytes()
        assert entry.index_url is not None
        rows = read_index((quirky_built.out / entry.index_url).read_bytes())
        assert rows.dtype == INDEX_DTYPE and len(rows) == entry.nsamples
        with tarfile.open(quirky_built.out / entry.url, "r:") as tar:
            members = tar.getmembers()
        assert len(members) == 3 * len(rows)
        for k, row in enumerate(rows):
            image, cls, meta = members[3 * k : 3 * k + 3]
            assert row["offset"] == image.offset
            assert row["image_offset"] == image.offset_data
            assert row["image_size"] == image.size
            assert row["end"] == meta.offset_data + -(-meta.size // 512) * 512
            payload = data[row["image_offset"] : row["image_offset"] + row["image_size"]]
            rel = json.loads(data[meta.offset_data : meta.offset_data + meta.size])["path"]
            assert payload == (quirky.root / rel).read_bytes()
            label = data[cls.offset_data : cls.offset_data + cls.size]
            assert int(label) == row["label"] == quirky.images[rel].label
        assert rows["offset"][0] == 0
        assert (rows["offset"][1:] == rows["end"][:-1]).all()
        assert rows["end"][-1] == len(data) - 1024 and data[-1024:] == b"\0" * 1024
        total += len(rows)
    assert total == len(quirky.images)


def test_tar_headers_are_reproducible(quirky_built: Any) -> None:
    for url in _urls(quirky_built):
        with tarfile.open(url, "r:") as tar:
            for m in tar:
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o444)
                assert m.type == tarfile.REGTYPE and not m.pax_headers


def test_manifest_is_a_wids_index_with_our_fields(quirky: Any, quirky_built: Any) -> None:
    doc = json.loads((quirky_built.out / "manifest.json").read_text(encoding="utf-8"))
    assert doc["__kind__"] == "wids-shard-index-v1" and doc["wids_version"] == 1
    assert doc["classes"] == quirky.classes
    assert doc["empty_classes"] == quirky.empty_classes
    assert doc["num_samples"] == len(quirky.images)
    first = 0
    for item in doc["shardlist"]:
        path = quirky_built.out / item["url"]
        assert not Path(item["url"]).is_absolute() and path.is_file()
        assert item["filesize"] == path.stat().st_size
        assert item["sha256"] == sha256(path.read_bytes())
        assert item["first_index"] == first
        assert item["index_sha256"] == sha256((quirky_built.out / item["index_url"]).read_bytes())
        first += item["nsamples"]
    assert first == doc["num_samples"]


def test_duplicate_report(quirky: Any, quirky_built: Any) -> None:
    dup = _manifest(quirky_built).duplicates
    assert [g["paths"] for g in dup["exact"]] == sorted(quirky.exact_groups)
    assert dup["exact_groups"] == len(quirky.exact_groups)
    assert dup["extra_copies"] == sum(len(g) - 1 for g in quirky.exact_groups)
    assert [g["paths"] for g in dup["conflicting_labels"]] == quirky.conflicting_groups
    assert dup["conflicting_labels"][0]["classes"] == ["n00000001", "n00000002"]
    for group in dup["exact"]:
        assert {quirky.source_sha(p) for p in group["paths"]} == {group["sha256"]}
    leaks = dup["against"]
    assert leaks["root"] == str(quirky.against) and leaks["matches"] == len(quirky.leaks)
    assert {e["path"]: e["other_paths"] for e in leaks["images"]} == quirky.leaks


def test_summary_reports_skips_and_duplicates(quirky: Any, quirky_built: Any) -> None:
    s = quirky_built.summary
    assert s["samples"] == len(quirky.images)
    assert s["skipped"] == len(quirky.skipped)
    assert sum(s["skipped_by_reason"].values()) == len(quirky.skipped)
    assert s["empty_classes"] == quirky.empty_classes
    assert s["duplicate_groups"] == 2 and s["conflicting_label_groups"] == 1
    assert s["against_matches"] == 1
