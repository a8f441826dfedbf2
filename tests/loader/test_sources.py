"""Tests for loader/sources.py: manifests, shard lists and brace patterns, local and over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds

from loader.sources import DatasetSource, ShardSource, resolve_source
from shards.manifest import ManifestError
from shards.tarscan import ShardFormatError
from tests.loader.helpers import loader_over, track, write_test_shards


def _summary(src: DatasetSource) -> list[tuple[str, int, int, str | None]]:
    return [
        (os.path.basename(s.url), s.nsamples, s.first_index, s.index_url and s.index_url[-13:])
        for s in src.shards
    ]


def _wds_shards(folder: Path, n: int = 5) -> list[str]:
    """Foreign shards: webdataset's ShardWriter, PAX headers, ``.cls`` before ``.jpg``."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "w-%02d.tar"), maxcount=3, verbose=0) as sink:
        for i in range(n):
            sink.write({"__key__": f"k{i:03d}", "cls": i % 2, "jpg": b"\xff\xd8\xff" + bytes(i)})
    return sorted(str(p) for p in folder.glob("w-*.tar"))


def test_manifest_file_and_directory(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "ds", [3, 0, 4])
    for given in (manifest, str(manifest), tmp_path / "ds", f"file://{manifest}"):
        src = resolve_source(given)
        assert src.num_samples == 7
        assert src.classes == ("c0", "c1", "c2")
        assert _summary(src) == [
            ("shard-000000.tar", 3, 0, "00000.idx.npy"),
            ("shard-000001.tar", 0, 3, "00001.idx.npy"),
            ("shard-000002.tar", 4, 3, "00002.idx.npy"),
        ]
        first = src.shards[0]
        assert first.url == str(tmp_path / "ds" / "shard-000000.tar")
        assert first.index_url == str(tmp_path / "ds" / "shard-000000.idx.npy")
        assert first.sha256 is not None and len(first.sha256) == 64
        assert first.filesize == (tmp_path / "ds" / "shard-000000.tar").stat().st_size
    assert resolve_source(manifest).origin == str(manifest)


def test_manifest_urls_resolve_against_its_location(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "ds", [2, 2])
    data = json.loads(manifest.read_text())
    data["shardlist"][0]["url"] = "../ds/shard-000000.tar"
    data["shardlist"][1]["url"] = str(tmp_path / "ds" / "shard-000001.tar")
    data["shardlist"][1]["index_url"] = None
    (tmp_path / "other").mkdir()
    moved = tmp_path / "other" / "m.json"
    moved.write_text(json.dumps(data))
    src = resolve_source(moved)
    assert [s.url for s in src.shards] == [
        str(tmp_path / "ds" / "shard-000000.tar"),
        str(tmp_path / "ds" / "shard-000001.tar"),
    ]
    assert src.shards[0].index_url == str(tmp_path / "other" / "shard-000000.idx.npy")
    assert src.shards[1].index_url is None


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no manifest at"):
        resolve_source(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        resolve_source(tmp_path / "nope.json")
    manifest = write_test_shards(tmp_path / "ds", [2, 2])
    (tmp_path / "ds" / "shard-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard .*shard-000001\.tar listed in manifest"):
        resolve_source(manifest)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        resolve_source(bad)
    bad.write_text(json.dumps({"__kind__": "something-else", "shardlist": []}))
    with pytest.raises(ManifestError, match="__kind__"):
        resolve_source(bad)
    data = json.loads(manifest.read_text())
    data["shardlist"][1]["first_index"] = 5
    bad.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"shardlist\[1\]\.first_index expected 2, got 5"):
        resolve_source(bad)


def test_manifest_without_json_suffix_is_sniffed(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "ds", [2])
    plain = tmp_path / "ds" / "MANIFEST"
    shutil.copy(manifest, plain)
    assert resolve_source(plain).num_samples == 2


def test_shard_list_with_sidecars_in_given_order(tmp_path: Path) -> None:
    write_test_shards(tmp_path, [3, 5])
    urls = [str(tmp_path / "shard-000001.tar"), str(tmp_path / "shard-000000.tar")]
    src = resolve_source(urls)
    assert _summary(src) == [
        ("shard-000001.tar", 5, 0, "00001.idx.npy"),
        ("shard-000000.tar", 3, 5, "00000.idx.npy"),
    ]
    assert src.classes == () and src.num_samples == 8
    assert all(s.sha256 is None and s.filesize for s in src.shards)


def test_shard_list_without_sidecars_is_scanned(tmp_path: Path) -> None:
    write_test_shards(tmp_path, [3, 5], with_index=False)
    src = resolve_source(str(tmp_path / "shard-{000000..000001}.tar"))
    assert _summary(src) == [("shard-000000.tar", 3, 0, None), ("shard-000001.tar", 5, 3, None)]
    assert src.origin.endswith("shard-{000000..000001}.tar")


def test_relative_paths_single_tar_and_file_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test_shards(tmp_path / "ds", [3, 5])
    monkeypatch.chdir(tmp_path)
    src = resolve_source("ds/shard-000001.tar")
    assert [s.url for s in src.shards] == [str(tmp_path / "ds" / "shard-000001.tar")]
    assert src.num_samples == 5
    url = f"file://{tmp_path}/ds/shard-000000.tar"
    src = resolve_source([url, Path("ds/shard-000001.tar")])  # type: ignore[list-item]
    assert src.shards[0].url == url and src.shards[0].index_url == url[:-4] + ".idx.npy"
    assert [s.first_index for s in src.shards] == [0, 3]


def test_list_errors(tmp_path: Path) -> None:
    write_test_shards(tmp_path, [2, 2])
    with pytest.raises(ValueError, match="at least one shard"):
        resolve_source([])
    with pytest.raises(ValueError, match="got ''"):
        resolve_source("")
    with pytest.raises(ValueError, match="got int"):
        resolve_source(3)  # type: ignore[arg-type]
    shard = str(tmp_path / "shard-000000.tar")
    with pytest.raises(ValueError, match="each shard once"):
        resolve_source([shard, shard])
    with pytest.raises(FileNotFoundError, match=r"shard .*shard-000002\.tar not found"):
        resolve_source(str(tmp_path / "shard-{000000..000009}.tar"))
    (tmp_path / "shard-000001.idx.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"unreadable sidecar index .*shard-000001\.idx\.npy"):
        resolve_source(str(tmp_path / "shard-{000000..000001}.tar"))


def test_truncated_foreign_shard_in_list(tmp_path: Path) -> None:
    write_test_shards(tmp_path, [3], with_index=False)
    shard = tmp_path / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1700])
    with pytest.raises(ShardFormatError, match=r"shard-000000\.tar: archive ends inside member"):
        resolve_source([str(shard)])


def test_webdataset_shards(tmp_path: Path) -> None:
    urls = _wds_shards(tmp_path)
    src = resolve_source(urls)
    assert [(s.nsamples, s.first_index, s.index_url) for s in src.shards] == [
        (3, 0, None),
        (2, 3, None),
    ]
    assert src.classes == () and src.num_samples == 5


def test_manifest_over_http(tmp_path: Path, http_server: Any) -> None:
    write_test_shards(tmp_path / "ds", [3, 4])
    base = http_server(tmp_path)
    for given in (f"{base}ds/manifest.json", f"{base}ds/"):
        src = resolve_source(given)
        assert src.shards[1] == ShardSource(
            url=f"{base}ds/shard-000001.tar",
            nsamples=4,
            first_index=3,
            index_url=f"{base}ds/shard-000001.idx.npy",
            sha256=src.shards[1].sha256,
            filesize=(tmp_path / "ds" / "shard-000001.tar").stat().st_size,
            index_sha256=hashlib.sha256(
                (tmp_path / "ds" / "shard-000001.idx.npy").read_bytes()
            ).hexdigest(),
        )
        assert src.classes == ("c0", "c1", "c2") and src.num_samples == 7
    assert not any(path.endswith(".tar") for _, path, _ in http_server.requests)
    with pytest.raises(FileNotFoundError, match=r"no manifest at .*/missing/manifest\.json"):
        resolve_source(f"{base}missing/manifest.json")
    (tmp_path / "ds" / "broken.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match="expected a JSON object"):
        resolve_source(f"{base}ds/broken.json")


def test_brace_pattern_over_http(tmp_path: Path, http_server: Any) -> None:
    write_test_shards(tmp_path / "with", [3, 4])
    write_test_shards(tmp_path / "without", [3, 4], with_index=False)
    _wds_shards(tmp_path / "wds")
    base = http_server(tmp_path)
    with_idx = resolve_source(f"{base}with/shard-{{000000..000001}}.tar")
    assert [(s.nsamples, s.first_index) for s in with_idx.shards] == [(3, 0), (4, 3)]
    assert with_idx.shards[1].index_url == f"{base}with/shard-000001.idx.npy"
    scanned = resolve_source(f"{base}without/shard-{{000000..000001}}.tar")
    assert [(s.nsamples, s.index_url) for s in scanned.shards] == [(3, None), (4, None)]
    foreign = resolve_source(f"{base}wds/w-{{00..01}}.tar")
    assert [s.nsamples for s in foreign.shards] == [3, 2]
    with pytest.raises(FileNotFoundError, match=r"shard http://.*/w-02\.tar not found"):
        resolve_source(f"{base}wds/w-{{00..02}}.tar")


def _edit(manifest: Path, change: Any) -> Path:
    doc = json.loads(manifest.read_text())
    change(doc)
    manifest.write_text(json.dumps(doc))
    return manifest


@pytest.mark.parametrize("how", ["same url", "same file", "symlink", "same sha256"])
def test_a_manifest_listing_a_shard_twice_is_refused(
    tmp_path: Path, http_server: Any, how: str
) -> None:
    manifest = write_test_shards(tmp_path / "ds", [3, 3])

    def repeat(doc: dict[str, Any]) -> None:
        first, second = doc["shardlist"]
        if how == "same url":
            second.update(url=first["url"], sha256="")
        elif how == "same file":
            second.update(url=str(tmp_path / "ds" / first["url"]), sha256="")
        elif how == "symlink":
            (tmp_path / "ds" / "alias.tar").symlink_to(tmp_path / "ds" / first["url"])
            second.update(url="alias.tar", sha256="")
        else:
            second["sha256"] = first["sha256"]

    _edit(manifest, repeat)
    named = "sha256=" if how == "same sha256" else r"url=.*shard-000000\.tar"
    with pytest.raises(ManifestError, match=f"expected each shard once.*got {named}.* twice"):
        resolve_source(manifest)
    if how in ("same url", "same sha256"):
        with pytest.raises(ManifestError, match=f"got {named}.* twice"):
            resolve_source(http_server(tmp_path) + "ds/manifest.json")


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("classes", None, "classes=None"),
        ("classes", "abcd", "classes='abcd'"),
        ("nsamples", True, r"shardlist\[1\]\.nsamples=True"),
        ("filesize", "abc", r"shardlist\[1\]\.filesize='abc'"),
        ("filesize", float("nan"), r"shardlist\[1\]\.filesize=nan"),
        ("filesize", float("inf"), r"shardlist\[1\]\.filesize=inf"),
    ],
)
def test_badly_typed_manifests_are_named_local_and_remote(
    tmp_path: Path, http_server: Any, field: str, value: Any, named: str
) -> None:
    manifest = write_test_shards(tmp_path / "ds", [3, 3])
    if field == "classes":
        _edit(manifest, lambda doc: doc.update(classes=value))
    else:
        _edit(manifest, lambda doc: doc["shardlist"][1].update({field: value}))
    for given in (str(manifest), http_server(tmp_path) + "ds/manifest.json"):
        with pytest.raises(ManifestError, match=f"expected .*, got {named}; "):
            resolve_source(given)
    (tmp_path / "ds" / "manifest.json").write_text("[" * 50_000 + "]" * 50_000)
    for given in (str(manifest), http_server(tmp_path) + "ds/manifest.json"):
        with pytest.raises(ManifestError, match="nested too deeply"):
            resolve_source(given)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("claim", [10**12, 2 * 10**9, 4])
@pytest.mark.parametrize("with_index", [True, False])
def test_a_claim_beyond_what_a_shard_holds_is_refused_before_planning(
    tmp_path: Path, http_server: Any, claim: int, with_index: bool
) -> None:
    """The claim is bounded by the index rows, else by the file size (1536 bytes a sample);
    the loader refuses it while resolving, so no plan is ever sized by it."""
    manifest = write_test_shards(tmp_path / "ds", [3, 3], with_index=with_index)

    def inflate(doc: dict[str, Any]) -> None:
        doc["shardlist"][1]["nsamples"] = claim
        doc["num_samples"] = 3 + claim

    _edit(manifest, inflate)
    size = (tmp_path / "ds" / "shard-000001.tar").stat().st_size
    if claim == 4 and not with_index:
        assert size // 1536 >= 4, "4 fits the file size: the reader's count check catches it"
        with pytest.raises(ValueError, match=r"shard-000001\.tar: header scan has 3 samples"):
            track(loader_over(str(manifest), 0), 3 + claim)
        return
    bound = "rows of its index" if claim == 4 else f"{size} bytes"
    pattern = rf"expected at most \d+ samples in shard .*shard-000001\.tar \({bound}.*{claim}"
    with pytest.raises(ManifestError, match=pattern):
        resolve_source(manifest)
    with pytest.raises(ManifestError, match=pattern):
        loader_over(str(manifest), 2)
    if claim != 4:
        remote = http_server(tmp_path) + "ds/manifest.json"
        with pytest.raises(ManifestError, match=rf"shard http://.*shard-000001\.tar \({size}"):
            resolve_source(remote)
        _edit(manifest, lambda doc: doc["shardlist"][1].pop("filesize"))  # one HEAD instead
        with pytest.raises(ManifestError, match=rf"shard http://.*shard-000001\.tar \({size}"):
            resolve_source(remote)


def test_unknown_manifest_fields_are_still_accepted(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "ds", [3, 4], image_bytes=lambda g: b"\xff\xd8\xff")

    def extend(doc: dict[str, Any]) -> None:
        doc["made_by"] = {"tool": "other", "nested": [1, [2, [3]]], "ratio": 0.5}
        doc["shardlist"][0]["wids_extra"] = ["x", None]

    _edit(manifest, extend)
    assert resolve_source(manifest).num_samples == 7
    counts, _ = track(loader_over(str(manifest), 2, decode=False), 7)
    assert counts.delivered == 7 and counts.duplicates == 0 and counts.missing == 0
