"""Tests for shards.build (library level): reproducibility, sizing, parts, resume, checks."""

from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from shards.build import BuildError, build_shards, merge_build
from shards.format import shard_name
from shards.manifest import Manifest
from shards.plan import SizingOptions
from tests.shards.helpers import (
    encode,
    file_hashes,
    jpeg,
    make_plain,
    quick_options,
    run_unprivileged,
)


def sample_paths(out: Path) -> list[list[str]]:
    """The source path of every sample, shard by shard, in stored order (read from the tars)."""
    shards = []
    for entry in Manifest.load(out).shards:
        with tarfile.open(out / entry.url, "r:") as tar:
            paths = []
            for m in tar:
                if m.name.endswith(".json"):
                    f = tar.extractfile(m)
                    assert f is not None
                    paths.append(json.loads(f.read())["path"])
            shards.append(paths)
    return shards


def build(src: Path, out: Path, **kw: Any) -> dict[str, Any]:
    kw.setdefault("sizing", SizingOptions(num_shards=3))
    return build_shards(src, out, quick_options(**kw))


def test_same_input_and_seed_give_identical_bytes_for_any_workers(
    quirky: Any, tmp_path: Path
) -> None:
    hashes = []
    for run, workers in enumerate((1, 1, 2, 3)):
        out = tmp_path / f"out{run}"
        build(quirky.root, out, workers=workers, against=str(quirky.against))
        hashes.append(file_hashes(out))
    assert len(hashes[0]) == 7  # 3 shards, 3 sidecars, the manifest
    assert all(h == hashes[0] for h in hashes[1:])


def test_different_seed_gives_different_order(plain_folder: Path, tmp_path: Path) -> None:
    build(plain_folder, tmp_path / "a", seed=1)
    build(plain_folder, tmp_path / "b", seed=2)
    a, b = sample_paths(tmp_path / "a"), sample_paths(tmp_path / "b")
    assert sorted(sum(a, [])) == sorted(sum(b, []))
    assert a != b
    assert (
        file_hashes(tmp_path / "a")["shard-000000.tar"]
        != file_hashes(tmp_path / "b")["shard-000000.tar"]
    )


def test_every_shard_mixes_classes(plain_folder: Path, tmp_path: Path) -> None:
    build(plain_folder, tmp_path / "o", sizing=SizingOptions(num_shards=4))
    for paths in sample_paths(tmp_path / "o"):
        assert len({p.split("/")[0] for p in paths}) >= 3, paths
    flat = sum(sample_paths(tmp_path / "o"), [])
    assert flat != sorted(flat)


@pytest.mark.parametrize("num_shards", [1, 2, 7, 59, 60])
def test_num_shards_sizes_differ_by_at_most_one(
    plain_folder: Path, tmp_path: Path, num_shards: int
) -> None:
    summary = build(plain_folder, tmp_path / "o", sizing=SizingOptions(num_shards=num_shards))
    sizes = [s.nsamples for s in Manifest.load(tmp_path / "o").shards]
    assert len(sizes) == num_shards and sum(sizes) == 60
    assert max(sizes) - min(sizes) <= 1
    assert summary["samples_per_shard"] == {"min": min(sizes), "max": max(sizes)}


def test_more_shards_than_images_gives_one_shard_per_image(tmp_path: Path) -> None:
    make_plain(tmp_path / "src", 5, 2)
    build(tmp_path / "src", tmp_path / "o", sizing=SizingOptions(num_shards=50))
    assert [s.nsamples for s in Manifest.load(tmp_path / "o").shards] == [1] * 5


@pytest.mark.parametrize("max_samples", [1, 7, 60, 1000])
def test_max_samples_is_respected(plain_folder: Path, tmp_path: Path, max_samples: int) -> None:
    build(plain_folder, tmp_path / "o", sizing=SizingOptions(max_samples=max_samples))
    sizes = [s.nsamples for s in Manifest.load(tmp_path / "o").shards]
    assert max(sizes) <= max_samples and sum(sizes) == 60
    assert len(sizes) == -(-60 // max_samples)


def test_max_bytes_is_respected(plain_folder: Path, tmp_path: Path) -> None:
    limit = 40_000
    build(plain_folder, tmp_path / "o", sizing=SizingOptions(max_bytes=limit))
    manifest = Manifest.load(tmp_path / "o")
    assert len(manifest.shards) > 1 and manifest.num_samples == 60
    for entry in manifest.shards:
        assert entry.filesize == (tmp_path / "o" / entry.url).stat().st_size <= limit
    # shards are not needlessly small: two neighbours would not fit in one
    sizes = [e.filesize for e in manifest.shards]
    assert all(a + b - 1024 > limit for a, b in zip(sizes, sizes[1:], strict=False))


def test_image_larger_than_max_bytes_gets_a_shard_of_its_own(tmp_path: Path) -> None:
    make_plain(tmp_path / "src", 4, 1)
    big = encode(".png", np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    (tmp_path / "src" / "n00000000" / "big.png").write_bytes(big)
    build(tmp_path / "src", tmp_path / "o", sizing=SizingOptions(max_bytes=len(big) // 2))
    manifest = Manifest.load(tmp_path / "o")
    assert manifest.num_samples == 5
    big_shards = [p for p in sample_paths(tmp_path / "o") if "n00000000/big.png" in p]
    assert big_shards == [["n00000000/big.png"]]


@pytest.mark.parametrize(
    "sizing",
    [
        SizingOptions(num_shards=0),
        SizingOptions(max_samples=0),
        SizingOptions(max_bytes=0),
        SizingOptions(num_shards=-1),
        SizingOptions(),
        SizingOptions(num_shards=2, max_samples=3),
    ],
)
def test_bad_sizing_is_rejected_before_writing(
    plain_folder: Path, tmp_path: Path, sizing: SizingOptions
) -> None:
    with pytest.raises(ValueError, match="expected"):
        build(plain_folder, tmp_path / "o", sizing=sizing)
    assert not list((tmp_path / "o").glob("shard-*"))


def test_part_builds_merged_equal_one_build(quirky: Any, tmp_path: Path) -> None:
    build(quirky.root, tmp_path / "whole", against=str(quirky.against))
    parts = tmp_path / "parts"
    for part in ((3, 3), (1, 3)):
        summary = build(quirky.root, parts, part=part)
        assert summary["part"] == f"{part[0]}/{part[1]}"
        assert not (parts / "manifest.json").exists()
    with pytest.raises(BuildError, match=r"shard-000001\.tar.*--part"):
        merge_build(parts)
    assert not (parts / "manifest.json").exists()
    build(quirky.root, parts, part=(2, 3))
    merge_build(parts, against=str(quirky.against))
    assert file_hashes(parts) == file_hashes(tmp_path / "whole")


def test_part_builds_with_more_parts_than_shards(plain_folder: Path, tmp_path: Path) -> None:
    build(plain_folder, tmp_path / "whole", sizing=SizingOptions(num_shards=2))
    for i in range(1, 5):
        summary = build(plain_folder, tmp_path / "p", sizing=SizingOptions(num_shards=2),
                        part=(i, 4))  # fmt: skip
        assert summary["shards_written"] == (1 if i <= 2 else 0)
    merge_build(tmp_path / "p")
    assert file_hashes(tmp_path / "p") == file_hashes(tmp_path / "whole")


def test_merge_without_a_build(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    with pytest.raises(FileNotFoundError, match="no build plan"):
        merge_build(tmp_path / "o")


def test_rerun_needs_resume_and_resume_needs_same_options(
    plain_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    build(plain_folder, out)
    before = file_hashes(out)
    with pytest.raises(BuildError, match="pass --resume"):
        build(plain_folder, out)
    with pytest.raises(BuildError, match="other input or options"):
        build(plain_folder, out, seed=5, resume=True)
    with pytest.raises(BuildError, match="other input or options"):
        build(plain_folder, out, sizing=SizingOptions(num_shards=4), resume=True)
    summary = build(plain_folder, out, resume=True)
    assert (summary["shards_written"], summary["shards_kept"]) == (0, 3)
    assert file_hashes(out) == before


def test_resume_rebuilds_missing_shards_and_removes_temporaries(
    plain_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    build(plain_folder, out, sizing=SizingOptions(num_shards=4))
    before = file_hashes(out)
    (out / "manifest.json").unlink()
    (out / shard_name(1)).unlink()  # report kept, tar gone
    (out / ".build" / f"{shard_name(2)}.json").unlink()  # killed before the report
    (out / ".build" / f"{shard_name(3)}.json").unlink()  # killed while writing: temporaries
    (out / f".{shard_name(3)}.abc.tmp").write_bytes(b"partial")
    (out / ".shard-000003.idx.npy.abc.tmp").write_bytes(b"partial")
    (out / ".build" / f".{shard_name(3)}.json.abc.tmp").write_bytes(b"{")
    summary = build(plain_folder, out, sizing=SizingOptions(num_shards=4), resume=True)
    assert (summary["shards_written"], summary["shards_kept"]) == (3, 1)
    assert file_hashes(out) == before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_output_that_is_not_empty_is_refused_untouched(plain_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not empty"):
        build(plain_folder, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("where", ["same", "inside", "deep"])
def test_output_inside_source_is_refused(tmp_path: Path, where: str) -> None:
    make_plain(tmp_path / "src", 3, 1)
    out = {"same": "src", "inside": "src/out", "deep": "src/n00000000/x/y"}[where]
    before = sorted((tmp_path / "src").rglob("*"))
    with pytest.raises(ValueError, match="inside the source"):
        build(tmp_path / "src", tmp_path / out)
    assert sorted((tmp_path / "src").rglob("*")) == before


def test_against_folder_must_exist_before_any_shard_is_written(
    plain_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="--against"):
        build(plain_folder, tmp_path / "o", against=str(tmp_path / "nope"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("verify", "sharded", "skipped"),
    [
        ("none", {"truncated.jpg", "corrupt.jpg", "badheader.jpg"}, {"text.jpg"}),
        ("header", {"corrupt.jpg"}, {"text.jpg", "truncated.jpg", "badheader.jpg"}),
        ("decode", set(), {"text.jpg", "truncated.jpg", "badheader.jpg", "corrupt.jpg"}),
    ],
)
def test_verify_levels(
    quirky: Any, tmp_path: Path, verify: str, sharded: set[str], skipped: set[str]
) -> None:
    build(quirky.root, tmp_path / "o", verify=verify)
    stored = {p.split("/")[-1] for p in sum(sample_paths(tmp_path / "o"), [])}
    assert sharded <= stored and not skipped & stored
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in Manifest.load(tmp_path / "o").skipped}
    assert skipped <= set(reasons)
    assert len(stored) == len(quirky.images) + len(sharded)


def test_resize_reencodes_every_image_as_small_jpeg(quirky: Any, tmp_path: Path) -> None:
    build(quirky.root, tmp_path / "o", resize_max_side=16, quality=80)
    count = 0
    for entry in Manifest.load(tmp_path / "o").shards:
        with tarfile.open(tmp_path / "o" / entry.url, "r:") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
        for name, data in members.items():
            if not name.endswith(".json"):
                continue
            key = name.split(".")[0]
            meta = json.loads(data)
            image = members[f"{key}.jpg"]
            pixels = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
            assert pixels is not None and max(pixels.shape) == 16
            assert pixels.shape == (meta["height"], meta["width"], 3)
            assert (meta["format"], meta["channels"]) == ("jpg", 3)
            assert meta["sha256"] == quirky.source_sha(meta["path"])
            count += 1
    assert count == len(quirky.images)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("verify", "full", "--verify"),
        ("workers", 0, "--workers"),
        ("resize_max_side", 0, "--resize-max-side"),
        ("quality", 0, "--quality"),
        ("quality", 101, "--quality"),
    ],
)
def test_bad_options_are_rejected(
    plain_folder: Path, tmp_path: Path, field: str, value: object, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build(plain_folder, tmp_path / "o", **{field: value})


def test_source_with_only_broken_images_builds_an_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "src" / "n1").mkdir(parents=True)
    (tmp_path / "src" / "n1" / "cut.jpg").write_bytes(jpeg(1)[:200])
    summary = build(tmp_path / "src", tmp_path / "o")
    assert summary["samples"] == 0 and summary["skipped"] == 1


def test_unreadable_file_and_folder_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_plain(src, 3, 1)
    (src / "n00000000" / "secret.jpg").write_bytes(jpeg(9))
    (src / "n00000000" / "locked").mkdir()
    (src / "n00000000" / "locked" / "inner.jpg").write_bytes(jpeg(10))
    os.chmod(src / "n00000000" / "secret.jpg", 0)
    os.chmod(src / "n00000000" / "locked", 0)
    probe = run_unprivileged(
        [sys.executable, "-c", f"open({str(src / 'n00000000' / 'secret.jpg')!r}, 'rb')"]
    )
    if probe.returncode == 0:
        pytest.skip("file permissions are not enforced for this user")
    code = (
        "import json, sys\n"
        "from shards.build import BuildOptions, build_shards\n"
        "from shards.plan import SizingOptions\n"
        "opts = BuildOptions(SizingOptions(num_shards=2), show_progress=False)\n"
        "print(json.dumps(build_shards(sys.argv[1], sys.argv[2], opts)))\n"
    )
    proc = run_unprivileged([sys.executable, "-c", code, str(src), str(tmp_path / "o")])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["samples"] == 3
    reasons = {s["path"]: s["reason"] for s in Manifest.load(tmp_path / "o").skipped}
    assert reasons == {
        "n00000000/locked": "unreadable folder: Permission denied",
        "n00000000/secret.jpg": "unreadable: Permission denied",
    }
