"""Durable builds (docs/architecture.md, section "Builds"): each file is fsynced before its
rename and its folder after it; ``--resume`` re-checks a finished shard's size and end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from shards.build import build_shards
from shards.format import shard_name
from shards.plan import SizingOptions
from tests.shards.helpers import file_hashes, quick_options


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_every_rename_is_fsynced_before_and_its_folder_after(
    plain_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", _fd_path(fd)))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", f"{os.fspath(src)} -> {os.fspath(dst)}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    build_shards(plain_folder, out, quick_options(sizing=SizingOptions(num_shards=2)))
    renames = [(i, e[1].split(" -> ")) for i, e in enumerate(events) if e[0] == "replace"]
    names = {Path(dst).name for _, (_, dst) in renames}
    assert {shard_name(0), shard_name(1), "manifest.json"} <= names
    for i, (src, dst) in renames:
        before = [p for kind, p in events[:i] if kind == "fsync"]
        after = [p for kind, p in events[i + 1 :] if kind == "fsync"]
        assert src in before, f"{src} renamed to {dst} without an fsync first"
        assert str(Path(dst).parent) in after, f"folder of {dst} not fsynced after the rename"


@pytest.mark.parametrize("damage", ["truncate", "zero-tail", "drop-sidecar"])
def test_resume_rebuilds_a_shard_whose_file_does_not_match_its_report(
    plain_folder: Path, tmp_path: Path, damage: str
) -> None:
    out = tmp_path / "out"
    options = quick_options(sizing=SizingOptions(num_shards=3))
    build_shards(plain_folder, out, options)
    clean = file_hashes(out)
    shard = out / shard_name(1)
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "zero-tail":
        shard.write_bytes(data[:-1024] + b"\x01" * 1024)
    else:
        (out / "shard-000001.idx.npy").unlink()
    summary = build_shards(plain_folder, out, quick_options(**{**vars(options), "resume": True}))
    assert summary["shards_written"] == 1 and summary["shards_kept"] == 2
    assert file_hashes(out) == clean
