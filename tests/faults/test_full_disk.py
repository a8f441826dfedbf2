"""A build on a full disk (docs/architecture.md, section "Builds"): it stops at the first
failed write with one line naming the path and the cause, exits non-zero, and once space is
free ``--resume`` finishes it with shards byte-identical to an undisturbed build.

The disk is made full by an injected ``OSError`` on the writes into one shard (a size-limited
mount needs privileges CI does not have); the build itself runs for real, in worker processes
that inherit the injection by ``fork``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

import shards.writer
from server.cli import main
from shards.format import shard_name
from shards.writer import report_path

SHARDS = 6


def _source(root: Path) -> Path:
    for i in range(36):
        folder = root / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.full((12, 16, 3), (i * 37) % 256, np.uint8)
        ok, data = cv2.imencode(".jpg", pixels)
        assert ok
        (folder / f"{i:03d}.jpg").write_bytes(data.tobytes())
    return root


def _hashes(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.iterdir())
        if p.is_file() and (p.name.startswith("shard-") or p.name == "manifest.json")
    }


def _shard(src: Path, out: Path, *extra: str) -> int:
    args = ["shard", str(src), str(out), "--num-shards", str(SHARDS), "--workers", "2"]
    return main([*args, "--json", *extra])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES], ids=["ENOSPC", "EACCES"])
def test_a_full_disk_stops_the_build_and_resume_finishes_it_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code: int
) -> None:
    src = _source(tmp_path / "src")
    assert _shard(src, tmp_path / "reference") == 0
    reference = _hashes(tmp_path / "reference")
    capsys.readouterr()

    real_write_all = shards.writer._write_all
    doomed = f".{shard_name(0)}."

    def full_disk(fd: int, parts: Sequence[bytes]) -> int:
        if doomed in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(code, os.strerror(code))
        time.sleep(0.05)  # the other shards take a while, as real ones do
        return real_write_all(fd, parts)

    monkeypatch.setattr(shards.writer, "_write_all", full_disk)
    out = tmp_path / "out"
    assert _shard(src, out) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, err
    assert str(out / shard_name(0)) in errors[0] and os.strerror(code) in errors[0]
    assert "Traceback" not in err
    finished = [i for i in range(SHARDS) if report_path(out, i).is_file()]
    assert 0 not in finished
    assert len(finished) <= 3, f"shards {finished} were still written after the failure"
    assert not list(out.glob(".*.tmp")), "no temporary file is left behind"

    monkeypatch.setattr(shards.writer, "_write_all", real_write_all)
    assert _shard(src, out, "--resume") == 0
    assert _hashes(out) == reference
