"""pytorch-lightning as its users run it, over ``make_loader``: ``trainer.fit`` with a
checkpoint every 10 steps, stopped mid-epoch and resumed from the checkpoint, trains on every
sample of the epoch exactly once on 1 process and on 2 (``ddp``, gloo, CPU); validation through
``ExactEval`` in ``validation_step`` gives the top-1 one process gets with the same model, over
every validation sample once (one of them padded on 2 ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.loader.helpers import jpeg_bytes, write_test_shards

pytest.importorskip("pytorch_lightning")

TRAIN = [43, 60, 37]  # 140 samples, batch 4: 35 steps on 1 process, 18 per rank on 2
VAL = [31, 12, 18]  # 61 samples, batch 5: shares of 31 and 30 on 2 ranks, one row padded
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("lightning")
    return (
        write_test_shards(base / "train", TRAIN, image_bytes=jpeg_bytes),
        write_test_shards(base / "val", VAL, image_bytes=jpeg_bytes),
    )


def _job(data: tuple[Path, Path], out: Path, devices: int, *extra: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "tests.loader.eval.lightning_job", "--shards", str(data[0]),
        "--val", str(data[1]), "--out", str(out), "--ckpt-dir", str(out.parent / "ckpt"),
        "--devices", str(devices), *extra,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(devices)]


@pytest.mark.parametrize("devices", [1, 2])
def test_fit_stopped_and_resumed_is_exactly_once_and_validation_exact(
    data: tuple[Path, Path], tmp_path: Path, devices: int
) -> None:
    first = _job(data, tmp_path / "first", devices, "--crash-at", "15")
    assert all(rank["crashed"] for rank in first)
    checkpoint = tmp_path / "ckpt" / "epoch=0-step=10.ckpt"
    assert checkpoint.is_file()
    rest = _job(data, tmp_path / "rest", devices, "--resume", str(checkpoint))
    before = [i for rank in first for s in rank["steps"] if s["step"] < 10 for i in s["ids"]]
    after = [i for rank in rest for s in rank["steps"] for i in s["ids"]]
    assert all(s["step"] >= 10 for rank in rest for s in rank["steps"])
    assert sorted(before + after) == list(range(sum(TRAIN)))
    for rank in rest:
        val = rank["val"]
        assert (val["count"], val["padded"]) == (sum(VAL), devices - 1)
        assert val["top1"] == val["one_process_top1"]
