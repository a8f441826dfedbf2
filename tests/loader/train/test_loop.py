"""``shardfeed train``: real torchrun ranks (gloo), exactly-once ids, equal steps, learning."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from loader.train import SmallCNN, random_flip
from loader.train.loop import train
from loader.train.options import TrainOptions
from shards.build import BuildOptions, build_shards
from shards.plan import SizingOptions
from shards.sample import make_sample
from tests.helpers import child_env
from tests.loader.faults_http import FaultyServer
from tests.server.helpers import LiveServer

RUN_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("train")
    make_sample(base / "src", images=3201, classes=4, seed=7, size="tiny")
    build_shards(
        base / "src",
        base / "shards",
        BuildOptions(sizing=SizingOptions(num_shards=5), show_progress=False),
    )
    return base / "shards"


def test_two_ranks_deliver_disjoint_ids_with_equal_steps_and_learn(
    train_shards: Path, tmp_path: Path
) -> None:
    prefix = tmp_path / "log"
    service = LiveServer(tmp_path / "service.db", [tmp_path], tmp_path / "serve.log").start()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "server.cli", "train", "--shards", str(train_shards), "--epochs", "1",
        "--device", "cpu", "--batch-size", "8", "--workers", "2", "--image-size", "32",
        "--lr", "0.02", "--log-json", str(prefix), "--report", service.url, "--job", "two",
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=child_env(), check=False
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        job = httpx.get(f"{service.url}/api/jobs/two").json()
        metrics = httpx.get(f"{service.url}/metrics").text
    finally:
        service.stop()
    # The service's totals are the union of both ranks' ids, as each rank's own report says.
    assert (job["duplicates"], job["missing"], job["tracker"]["padded"]) == (0, 0, 1), job
    assert 'shardfeed_job_missing{job="two"} 0.0' in metrics
    logs = [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in (0, 1)]
    ids = [np.array(log["ids"][0]) for log in logs]
    assert len(np.intersect1d(ids[0], ids[1])) == 0
    assert sorted(np.concatenate(ids).tolist()) == list(range(3201))
    steps = [log["epochs"][0]["steps"] for log in logs]
    assert steps[0] == steps[1] == 201  # shares 1601 and 1600: rank 1 pads one sample
    for log in logs:
        epoch = log["epochs"][0]
        assert epoch["duplicates"] == 0 and epoch["missing"] == 0
        assert epoch["padded"] == 1
        losses = epoch["step_losses"]
        assert np.mean(losses[-30:]) < 0.6 * np.mean(losses[:10])


def test_device_decode_trains_on_every_id_once(tmp_path: Path) -> None:
    """decode="device" through the loop: workers ship bytes, the CPU stand-in decodes."""
    make_sample(tmp_path / "src", images=90, classes=3, seed=3, size="tiny")
    build_shards(
        tmp_path / "src",
        tmp_path / "shards",
        BuildOptions(sizing=SizingOptions(num_shards=2), show_progress=False),
    )
    options = TrainOptions(
        shards=str(tmp_path / "shards"), epochs=2, device="cpu", batch_size=16, workers=1,
        image_size=16, decode="device", log_json=str(tmp_path / "log"),
    )  # fmt: skip
    reports = train(options)
    assert [(r.samples, r.steps, r.duplicates, r.missing) for r in reports] == [(90, 6, 0, 0)] * 2
    ids = json.loads((tmp_path / "log.rank0.json").read_text())["ids"]
    assert [sorted(epoch) for epoch in ids] == [list(range(90))] * 2


def test_train_rejects_bad_arguments(train_shards: Path) -> None:
    for bad, flag in ((["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size")):
        proc = subprocess.run(
            [sys.executable, "-m", "server.cli", "train", "--shards", str(train_shards), *bad],
            capture_output=True,
            text=True,
            timeout=120,
            env=child_env(),
            check=False,
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0], proc.stderr


def test_random_flip_is_one_batched_choice_per_image() -> None:
    images = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    images = images.repeat(32, 1, 1, 1)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = (out == images.flip(3)).flatten(1).all(1)
    kept = (out == images).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert 0 < int(flipped.sum()) < len(images)


def test_small_cnn_gives_logits_per_class() -> None:
    model = SmallCNN(num_classes=5).to(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert model(x).shape == (3, 5)


def test_retries_reach_the_reported_tracker_counts(tmp_path: Path) -> None:
    """Training over a failing HTTP server: the stats sent to the service carry the retries
    beside the tracker counts (a stand-in endpoint on 127.0.0.1 records what arrives)."""
    make_sample(tmp_path / "src", images=48, classes=3, seed=1, size="tiny")
    build_shards(
        tmp_path / "src",
        tmp_path / "shards",
        BuildOptions(sizing=SizingOptions(num_shards=3), show_progress=False),
    )
    posts: list[dict[str, object]] = []

    class Stats(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    service = ThreadingHTTPServer(("127.0.0.1", 0), Stats)
    threading.Thread(target=service.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with FaultyServer(tmp_path) as shards:
            shards.script(".tar", ["503", "drop", "500"], every=1, methods="GET")
            train(
                TrainOptions(
                    shards=shards.url + "shards/manifest.json",
                    epochs=1,
                    device="cpu",
                    batch_size=8,
                    workers=1,
                    image_size=32,
                    report_url=f"http://127.0.0.1:{service.server_address[1]}",
                )
            )
            assert shards.pending() == 0
    finally:
        service.shutdown()
        service.server_close()
    tracker = posts[-1]["tracker"]
    assert isinstance(tracker, dict)
    assert tracker["retries"] == 3 and tracker["missing"] == 0 and tracker["duplicates"] == 0
