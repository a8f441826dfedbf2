"""Tests for shards.verify: ``verify`` finds every kind of damage and names it; ``inspect``."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.cli import main
from shards.format import INDEX_DTYPE, read_index
from shards.manifest import Manifest
from shards.verify import inspect_build, verify_build

SHARD = "shard-000001.tar"
SIDECAR = "shard-000001.idx.npy"


def run_verify(out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = main(["verify", str(out)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def edit_manifest(out: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    change(doc)
    (out / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")


def test_clean_build_verifies(quirky_built: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_build(quirky_built.out) == []
    code, lines, err = run_verify(quirky_built.out, capsys)
    assert code == 0 and len(lines) == 1 and lines[0].startswith("ok") and err == ""


def _payload_offset(out: Path) -> int:
    return int(read_index((out / SIDECAR).read_bytes())["image_offset"][1]) + 5


@pytest.mark.parametrize(
    "where", ["image payload", "tar header name", "header checksum", "end padding"]
)
def test_one_flipped_byte_fails_and_names_the_shard(
    quirky_built: Any,
    copy_build: Callable[[Path], Path],
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    out = copy_build(quirky_built.out)
    size = (out / SHARD).stat().st_size
    offset = {
        "image payload": _payload_offset(out),
        "tar header name": 3,
        "header checksum": 150,
        "end padding": size - 10,
    }[where]
    flip(out / SHARD, offset)
    problems = verify_build(out)
    assert problems and all(p.startswith(SHARD) for p in problems), problems
    assert any("sha256" in p for p in problems)
    code, lines, err = run_verify(out, capsys)
    assert code == 1 and lines == problems
    assert err.count("\n") == 1 and f"{len(problems)} problem(s)" in err


@pytest.mark.parametrize("keep", [0, 700, 0.5, -1024, -1])
def test_truncated_shard(
    quirky_built: Any, copy_build: Callable[[Path], Path], keep: float
) -> None:
    out = copy_build(quirky_built.out)
    data = (out / SHARD).read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    (out / SHARD).write_bytes(data[:cut])
    problems = verify_build(out)
    assert any(p.startswith(f"{SHARD}: size {cut} bytes") for p in problems), problems
    assert all(p.startswith(("shard-000001.tar: ", "shard-000001.idx.npy: ")) for p in problems)


def test_deleted_shard(
    quirky_built: Any, copy_build: Callable[[Path], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_build(quirky_built.out)
    (out / SHARD).unlink()
    assert verify_build(out) == [f"{SHARD}: missing"]
    code, lines, _ = run_verify(out, capsys)
    assert code == 1 and lines == [f"{SHARD}: missing"]


def test_swapped_shards_are_both_named(
    quirky_built: Any, copy_build: Callable[[Path], Path]
) -> None:
    out = copy_build(quirky_built.out)
    a, b = out / "shard-000000.tar", out / "shard-000002.tar"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    named = {p.split(":")[0] for p in verify_build(out)}
    assert {"shard-000000.tar", "shard-000002.tar"} <= named
    assert all(n.startswith(("shard-000000.", "shard-000002.")) for n in named)


def test_flipped_byte_in_sidecar(quirky_built: Any, copy_build: Callable[[Path], Path]) -> None:
    out = copy_build(quirky_built.out)
    flip(out / SIDECAR, (out / SIDECAR).stat().st_size - 3)
    assert verify_build(out) == [f"{SIDECAR}: sha256 does not match the manifest"]


def test_deleted_sidecar(quirky_built: Any, copy_build: Callable[[Path], Path]) -> None:
    out = copy_build(quirky_built.out)
    (out / SIDECAR).unlink()
    assert verify_build(out) == [f"{SIDECAR}: sidecar index of {SHARD} missing"]


def _replace_sidecar(out: Path, data: bytes) -> None:
    (out / SIDECAR).write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()

    def change(doc: dict[str, Any]) -> None:
        doc["shardlist"][1]["index_sha256"] = sha

    edit_manifest(out, change)


def test_sidecar_with_wrong_offsets_and_matching_hash(
    quirky_built: Any, copy_build: Callable[[Path], Path]
) -> None:
    out = copy_build(quirky_built.out)
    rows = read_index((out / SIDECAR).read_bytes()).copy()
    rows["offset"][1] += 512
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    _replace_sidecar(out, buf.getvalue())
    assert verify_build(out) == [f"{SIDECAR}: sample offsets disagree with the headers of {SHARD}"]


def test_sidecar_of_wrong_dtype(quirky_built: Any, copy_build: Callable[[Path], Path]) -> None:
    out = copy_build(quirky_built.out)
    buf = io.BytesIO()
    np.save(buf, np.arange(5), allow_pickle=False)
    _replace_sidecar(out, buf.getvalue())
    problems = verify_build(out)
    assert len(problems) == 1 and problems[0].startswith(f"{SIDECAR}: expected a 1-d sidecar")


def test_sidecar_that_is_not_npy(quirky_built: Any, copy_build: Callable[[Path], Path]) -> None:
    out = copy_build(quirky_built.out)
    _replace_sidecar(out, b"not numpy at all")
    problems = verify_build(out)
    assert len(problems) == 1 and problems[0].startswith(SIDECAR), problems


def test_sample_count_disagreeing_with_manifest(
    quirky_built: Any, copy_build: Callable[[Path], Path]
) -> None:
    out = copy_build(quirky_built.out)

    def change(doc: dict[str, Any]) -> None:
        doc["shardlist"][-1]["nsamples"] += 1
        doc["num_samples"] += 1

    edit_manifest(out, change)
    n = Manifest.load(out).shards[-1].nsamples
    assert verify_build(out) == [f"shard-000002.tar: {n - 1} samples, manifest says {n}"]


def _rewrite_tar(
    path: Path, reorder: Callable[[list[tarfile.TarInfo]], list[tarfile.TarInfo]]
) -> None:
    with tarfile.open(path, "r:") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    data = {m.name: payload for m, payload in members}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for m in reorder([m for m, _ in members]):
            tar.addfile(m, io.BytesIO(data[m.name]) if m.isfile() else None)
    path.write_bytes(buf.getvalue())


def test_non_adjacent_members_are_a_structure_problem(
    quirky_built: Any, copy_build: Callable[[Path], Path]
) -> None:
    out = copy_build(quirky_built.out)
    _rewrite_tar(out / SHARD, lambda ms: ms[3:] + ms[:3])  # first sample moved to the end
    _rewrite_tar(out / SHARD, lambda ms: ms[:1] + ms[3:4] + ms[1:3] + ms[4:])
    problems = verify_build(out)
    assert any("not adjacent" in p for p in problems), problems
    assert all(p.startswith(SHARD) for p in problems)


def test_directory_member_is_a_structure_problem(
    quirky_built: Any, copy_build: Callable[[Path], Path]
) -> None:
    out = copy_build(quirky_built.out)

    def add_dir(ms: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        return [d, *ms]

    _rewrite_tar(out / SHARD, add_dir)
    assert any("not a regular file" in p for p in verify_build(out))


def test_missing_manifest_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["verify", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no manifest" in err


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"__kind__": "other"}', "__kind__"),
        ('{"__kind__": "wids-shard-index-v1", "shardlist": []}', "shardlist"),
    ],
)
def test_bad_manifest_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, match: str
) -> None:
    (tmp_path / "manifest.json").write_text(text)
    code = main(["verify", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and match in err


def test_inspect_summarises_the_build(quirky: Any, quirky_built: Any) -> None:
    info = inspect_build(quirky_built.out)
    manifest = Manifest.load(quirky_built.out)
    sizes = [s.nsamples for s in manifest.shards]
    assert info["shards"] == 3 and info["samples"] == len(quirky.images) == sum(sizes)
    assert info["samples_per_shard"] == {"min": min(sizes), "max": max(sizes)}
    assert info["classes"] == len(quirky.classes)
    assert info["bytes"] == sum((quirky_built.out / s.url).stat().st_size for s in manifest.shards)
    assert info["skipped"] == len(quirky.skipped)
    assert info["duplicate_groups"] == 2 and info["duplicate_extra_copies"] == 2
    assert info["conflicting_label_groups"] == 1 and info["against_matches"] == 1
    assert info["build"]["seed"] == 0 and info["build"]["fingerprint"]


def test_index_dtype_is_what_the_writer_stores(quirky_built: Any) -> None:
    assert read_index((quirky_built.out / SIDECAR).read_bytes()).dtype == INDEX_DTYPE
