"""The ``device-bytes`` bench mode (loader/bench/builders.py): the byte-batch path of
``decode="device"`` against the read limit, with every sample delivered once."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from loader.bench.engine import BenchConfig, run_bench
from tests.loader.helpers import write_test_shards


def _jpeg(gid: int) -> bytes:
    image = np.full((24 + gid % 5, 32, 3), gid % 250, dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_device_bytes_runs_against_the_read_limit(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [9, 8], image_bytes=_jpeg)
    config = BenchConfig(
        folder=None,
        shards=str(manifest),
        modes=("device-bytes",),
        workers=2,
        batch_size=4,
        image_size=8,
        decode=False,
    )
    doc = run_bench(config)
    mode = doc["modes"]["device-bytes"]
    assert mode["status"] == "ok", mode
    assert (mode["samples"], mode["duplicates"], mode["missing"]) == (17, 0, 0)
    assert mode["ratio_to_limit"] > 0 and doc["limit"]["decode"] is False


def test_device_bytes_with_decode_is_not_applicable(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [3], image_bytes=_jpeg)
    config = BenchConfig(
        folder=None, shards=str(manifest), modes=("device-bytes",), workers=0, batch_size=2
    )
    mode = run_bench(config)["modes"]["device-bytes"]
    assert mode["status"] == "not_applicable" and "--decode none" in mode["reason"]
