"""``loader.bench.decodecompare`` on the CPU: both decodes run over real workers, every sample
is counted once per timed epoch, and the device run reports where its rows were decoded."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from loader.bench.decodecompare import main, measure
from tests.loader.helpers import write_test_shards


def jpeg(gid: int) -> bytes:
    image = np.full((24 + gid % 3, 30, 3), 40 * (gid % 6), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_compare_reports_both_decodes_and_the_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_test_shards(tmp_path, [10, 9], image_bytes=jpeg)
    args = ["--shards", str(manifest), "--device", "cpu", "--workers", "2", "--batch-size", "4"]
    assert main([*args, "--image-size", "8", "--epochs", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    runs = {run["decode"]: run for run in doc["runs"]}
    assert set(runs) == {"opencv", "device"}
    assert all(run["samples"] == 19 and run["samples_per_s"] > 0 for run in runs.values())
    assert runs["device"]["decode_counts"] == {
        "device": 38, "orientation": 0, "format": 0, "error": 0, "failed": 0
    }  # fmt: skip
    assert sum(runs["opencv"]["decode_counts"].values()) == 0
    assert all(run["host_wait_ms_per_step"] > 0 for run in runs.values())
    assert doc["device_over_opencv"] > 0 and doc["workers"] == 2


def test_measure_rejects_no_timed_epochs(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [2], image_bytes=jpeg)
    with pytest.raises(ValueError, match="epochs >= 1"):
        measure(str(manifest), decode="device", device="cpu", workers=0, batch_size=2,
                image_size=8, epochs=0)  # fmt: skip
