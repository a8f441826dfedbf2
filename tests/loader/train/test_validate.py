"""``shardfeed train --val``: a top-1 after each epoch that is exact over real torchrun ranks
(gloo), equal to one process scoring the same model; old checkpoints pruned to
``--keep-checkpoints``; the figure reaches the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from loader import make_loader
from loader.device.prefetcher import DevicePrefetcher
from loader.train.checkpoint import latest_checkpoint, load_checkpoint
from loader.train.loop import train
from loader.train.model import SmallCNN
from loader.train.options import TrainOptions
from shards.build import BuildOptions, build_shards
from shards.plan import SizingOptions
from shards.sample import make_sample
from tests.loader.helpers import HttpServers

TRAIN, VAL, CLASSES = 320, 599, 4
RUN_TIMEOUT_S = 300


def _build(base: Path, name: str, images: int, seed: int) -> Path:
    make_sample(base / f"{name}-src", images=images, classes=CLASSES, seed=seed, size="tiny")
    options = BuildOptions(sizing=SizingOptions(num_shards=3), show_progress=False)
    build_shards(base / f"{name}-src", base / name, options)
    return base / name


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("val")
    return _build(base, "train", TRAIN, 1), _build(base, "val", VAL, 2)


@pytest.fixture
def stats_endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in for the service's stats endpoint on 127.0.0.1: it records what arrives."""
    posts: list[dict[str, Any]] = []

    class Stats(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    service = ThreadingHTTPServer(("127.0.0.1", 0), Stats)
    threading.Thread(target=service.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{service.server_address[1]}", posts
    finally:
        service.shutdown()
        service.server_close()


def _top1_in_one_process(checkpoint: Path, val: Path) -> float:
    """The plain single-process loop: every sample of the val set scored once."""
    model = SmallCNN(CLASSES)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    model.eval()
    loader = make_loader(val, batch_size=16, num_workers=0, image_size=32, train=False)
    correct = seen = 0
    with torch.no_grad():
        for batch in DevicePrefetcher(loader, torch.device("cpu")):
            assert not batch.padded.any()
            correct += int((model(batch.images).argmax(1) == batch.labels).sum())
            seen += len(batch.ids)
    assert seen == VAL
    return correct / seen


def test_two_ranks_score_every_val_sample_once_as_one_process_would(
    data: tuple[Path, Path], tmp_path: Path, stats_endpoint: tuple[str, list[dict[str, Any]]]
) -> None:
    shards, val = data
    url, posts = stats_endpoint
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    ckpt = tmp_path / "ckpt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "server.cli", "train", "--shards", str(shards), "--val", str(val), "--epochs", "1",
        "--device", "cpu", "--batch-size", "16", "--workers", "1", "--image-size", "32",
        "--checkpoint-dir", str(ckpt), "--checkpoint-every", "10", "--json", "--report", url,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert {r["steps"] for r in reports} == {10}  # the checkpoint of step 10 is the final model
    assert {r["val_samples"] for r in reports} == {VAL}
    assert {r["duplicates"] for r in reports} == {r["missing"] for r in reports} == {0}
    top1 = {r["val_top1"] for r in reports}
    assert len(top1) == 1
    last = latest_checkpoint(ckpt)
    assert last is not None and last.name == "ckpt-000000010.pt"
    value = top1.pop()
    assert value == _top1_in_one_process(last, val)
    # what the service gets: the top-1 from every rank; tracker counts that add up over the
    # ranks to the merged ones (every sample once)
    final = {post["rank"]: post for post in posts}
    assert sorted(final) == [0, 1]
    for post in final.values():
        assert post["evals"] == [{"epoch": 0, "top1": value, "samples": VAL}]
    totals = {
        k: sum(p["tracker"].get(k, 0) for p in final.values()) for k in ("delivered", "missing")
    }
    assert totals == {"delivered": TRAIN, "missing": 0}


def test_one_process_keeps_the_newest_checkpoints_and_reports_top1(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    shards, val = data
    ckpt = tmp_path / "ckpt"
    reports = train(
        TrainOptions(
            shards=str(shards),
            val=str(val),
            device="cpu",
            batch_size=32,
            workers=0,
            image_size=32,
            checkpoint_dir=str(ckpt),
            checkpoint_every=2,
            keep_checkpoints=3,
        )
    )
    assert [p.name for p in sorted(ckpt.iterdir())] == [
        "ckpt-000000006.pt",
        "ckpt-000000008.pt",
        "ckpt-000000010.pt",
    ]
    (report,) = reports
    assert report.val_samples == VAL and report.val_top1 is not None
    assert report.val_top1 == _top1_in_one_process(ckpt / "ckpt-000000010.pt", val)
    resumed = train(
        TrainOptions(
            shards=str(shards),
            val=str(val),
            epochs=2,
            device="cpu",
            batch_size=32,
            workers=0,
            image_size=32,
            checkpoint_dir=str(ckpt),
            checkpoint_every=4,
            resume=True,
        )
    )
    # the checkpoint of step 10 holds epoch 0 with every batch taken: its rest is empty
    got = [(r.epoch, r.steps, r.resumed_from_step, r.val_samples) for r in resumed]
    assert got == [(0, 0, 10, VAL), (1, 10, None, VAL)]
    assert all((r.duplicates, r.missing) == (0, 0) for r in resumed)
    assert [p.name for p in sorted(ckpt.iterdir())] == [
        "ckpt-000000012.pt",
        "ckpt-000000016.pt",
        "ckpt-000000020.pt",
    ]


def test_bad_keep_checkpoints_is_refused(data: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="--keep-checkpoints >= 0"):
        train(TrainOptions(shards=str(data[0]), keep_checkpoints=-1))


def test_cache_dir_keeps_remote_shards_on_the_node(
    data: tuple[Path, Path], tmp_path: Path, http_server: HttpServers
) -> None:
    base = http_server(data[0].parent)
    cache = tmp_path / "cache"
    (report,) = train(
        TrainOptions(
            shards=f"{base}{data[0].name}/manifest.json",
            val=f"{base}{data[1].name}/manifest.json",
            device="cpu",
            batch_size=64,
            workers=0,
            image_size=16,
            cache_dir=str(cache),
        )
    )
    assert (report.samples, report.missing, report.val_samples) == (TRAIN, 0, VAL)
    cached = sorted(p.name for p in cache.rglob("*.tar"))
    assert len(cached) == 6  # the 3 train shards and the 3 val shards, each once
    tars = len([r for r in http_server.requests if r[0] == "GET" and r[1].endswith(".tar")])
    assert tars == 6
