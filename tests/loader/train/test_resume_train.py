"""``shardfeed train --resume`` under real torchrun ranks (gloo): a 2-rank job is killed with
SIGKILL after a checkpoint, resumed with 3 ranks, killed again after a later checkpoint, and
finished with 1 rank. The per-rank step logs show every id of the epoch exactly once, and the
ranks of each run step together. Plus the checkpoint file rules, without torchrun."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch

from loader.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from shards.build import BuildOptions, build_shards
from shards.plan import SizingOptions
from shards.sample import make_sample
from tests.helpers import child_env
from tests.server.helpers import LiveServer

IMAGES = 240
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("resume-train")
    make_sample(base / "src", images=IMAGES, classes=3, seed=3, size="tiny")
    options = BuildOptions(sizing=SizingOptions(num_shards=3), show_progress=False)
    build_shards(base / "src", base / "shards", options)
    return base / "shards"


def _command(
    shards: Path, ranks: int, ckpt: Path, log: Path, resume: bool, report: str
) -> list[str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
        str(ranks), "-m", "server.cli", "train", "--shards", str(shards), "--epochs", "2",
        "--device", "cpu", "--batch-size", "2", "--workers", "2", "--image-size", "32",
        "--checkpoint-dir", str(ckpt), "--checkpoint-every", "10", "--log-json", str(log),
        "--report", report, "--job", "resumed",
    ]  # fmt: skip
    return cmd + (["--resume"] if resume else [])


def _run_until_checkpoint(cmd: list[str], ckpt: Path, step: int) -> None:
    """Start the job, SIGKILL its whole process group once checkpoint ``step`` exists."""
    target = ckpt / f"ckpt-{step:09d}.pt"
    proc = subprocess.Popen(
        cmd,
        env=child_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not target.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                pytest.fail(f"job ended (rc {proc.returncode}) before checkpoint {step}: {err}")
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint {step} within {RUN_TIMEOUT_S} s")
            time.sleep(0.01)
    finally:
        _kill_tree(proc.pid)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it at once, as a scheduler's preemption does
    (torchrun starts its ranks in sessions of their own, so its process group is not enough)."""
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _steps(log: Path, ranks: int, upto: int | None) -> list[list[dict[str, object]]]:
    """Each rank's logged steps (up to step ``upto``: what the checkpoint kept)."""
    out = []
    for rank in range(ranks):
        lines = Path(f"{log}.rank{rank}.steps.jsonl").read_text().splitlines()
        steps = [json.loads(line) for line in lines if line.strip()]
        out.append([s for s in steps if upto is None or int(s["step"]) <= upto])  # type: ignore[call-overload]
    return out


def test_killed_and_resumed_with_other_rank_counts_is_exactly_once(
    shards: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    logs = [tmp_path / f"run{i}" for i in range(3)]
    service = LiveServer(tmp_path / "service.db", [tmp_path], tmp_path / "serve.log").start()
    try:
        url = service.url
        _run_until_checkpoint(_command(shards, 2, ckpt, logs[0], False, url), ckpt, 20)
        assert latest_checkpoint(ckpt) is not None
        kept_first = latest_checkpoint(ckpt)
        first_step = load_checkpoint(kept_first)["step"]  # type: ignore[arg-type]
        second = _command(shards, 3, ckpt, logs[1], True, url)
        _run_until_checkpoint(second, ckpt, first_step + 20)
        second_step = load_checkpoint(latest_checkpoint(ckpt))["step"]  # type: ignore[arg-type]
        done = subprocess.run(
            _command(shards, 1, ckpt, logs[2], True, url),
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        job = httpx.get(f"{url}/api/jobs/resumed").json()
    finally:
        service.stop()
    # The service's counts span both stops: the killed runs' processes are the resumed run's
    # past, and its bitmap starts from the checkpoint's merged ids.
    assert (job["duplicates"], job["missing"], job["tracker"]["epoch"]) == (0, 0, 1), job

    runs = [
        _steps(logs[0], 2, first_step),
        _steps(logs[1], 3, second_step),
        _steps(logs[2], 1, None),
    ]
    starts = [0, first_step, second_step]
    for run, start in zip(runs, starts, strict=True):
        numbers = [[int(s["step"]) for s in rank] for rank in run]  # type: ignore[call-overload]
        assert all(n == numbers[0] for n in numbers), "ranks took different steps"
        assert numbers[0][0] == start + 1
    for epoch in (0, 1):
        ids = [
            i
            for run in runs
            for rank in run
            for s in rank
            if s["epoch"] == epoch
            for i in s["ids"]  # type: ignore[attr-defined]
        ]
        assert sorted(ids) == list(range(IMAGES)), f"epoch {epoch} not exactly once"
    report = json.loads(Path(f"{logs[2]}.rank0.json").read_text())
    first = report["epochs"][0]
    assert first["resumed_from_step"] == second_step
    assert (first["duplicates"], first["missing"]) == (0, 0)


def test_checkpoint_files(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "none") is None
    save_checkpoint(tmp_path, 3, {"model": {"w": torch.ones(2)}})
    save_checkpoint(tmp_path, 12, {"model": {"w": torch.zeros(2)}})
    (tmp_path / ".ckpt-000000020.pt.abc.tmp").write_bytes(b"half a save")
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "ckpt-000000012.pt"
    assert load_checkpoint(latest)["step"] == 12
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and "12" in p.name]

    truncated = tmp_path / "ckpt-000000013.pt"
    truncated.write_bytes(latest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*delete it") as info:
        load_checkpoint(truncated)
    assert "\n" not in str(info.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"kind": "other"}, foreign)
    with pytest.raises(CheckpointError, match="expected a shardfeed training checkpoint"):
        load_checkpoint(foreign)
    newer = save_checkpoint(tmp_path / "n", 1, {})
    doc = load_checkpoint(newer)
    torch.save({**doc, "version": 99}, newer)
    with pytest.raises(CheckpointError, match="upgrade shardfeed"):
        load_checkpoint(newer)


def test_resume_needs_a_checkpoint_dir(shards: Path) -> None:
    from loader.train.loop import train
    from loader.train.options import TrainOptions

    with pytest.raises(ValueError, match="--checkpoint-dir"):
        train(TrainOptions(shards=str(shards), resume=True))
