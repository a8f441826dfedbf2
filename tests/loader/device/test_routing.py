"""Where byte-batch rows are decoded (loader/device/decoder.py, loader/device/prefetcher.py):
EXIF orientation routes a JPEG to the CPU, every row is counted once by where it was decoded,
and more than 1% off the device draws one warning."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from loader.dataloader import make_loader
from loader.device.decoder import ROW_COUNTS, DeviceDecoder, cpu_reason
from loader.device.prefetcher import DevicePrefetcher
from shards.imageinfo import image_info
from tests.loader.device.helpers import oriented_jpeg
from tests.loader.helpers import write_test_shards

PIXELS = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}  # images in 0..255


def _loader(manifest: Path, decode: Any, **options: Any) -> Any:
    settings = {"batch_size": 4, "num_workers": 0, "image_size": 16, "seed": 3, **options}
    return make_loader(str(manifest), decode=decode, **settings)


def _by_id(prefetcher: DevicePrefetcher) -> dict[int, torch.Tensor]:
    images: dict[int, torch.Tensor] = {}
    for batch in prefetcher:
        for row, gid in enumerate(batch.ids.tolist()):
            if not bool(batch.padded[row]):
                images[gid] = batch.images[row].clone()
    return images


@pytest.mark.parametrize("big_endian", [False, True])
def test_each_orientation_but_one_is_routed_to_the_cpu(big_endian: bool) -> None:
    for orientation in range(1, 9):
        info = image_info(oriented_jpeg(orientation, big_endian=big_endian))
        expected = None if orientation == 1 else "orientation"
        assert cpu_reason(info) == expected, orientation
    progressive = cv2.imencode(
        ".jpg", np.zeros((8, 8, 3), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    )[1].tobytes()
    assert cpu_reason(image_info(progressive)) == "format"
    assert cpu_reason(None) == "format"


def test_oriented_samples_get_the_cpu_paths_pixels_and_are_counted(tmp_path: Path) -> None:
    """Ids 0..7 carry orientations 1..8, ids 8..11 none: the device path flags 7 rows, decodes
    them on the CPU to the worker decode's pixels (as stored, not rotated), and counts them."""

    def images(gid: int) -> bytes:
        return oriented_jpeg(gid + 1 if gid < 8 else 1, seed=gid)

    manifest = write_test_shards(tmp_path, [6, 6], image_bytes=images)
    flagged = sorted(
        gid for batch in _loader(manifest, "device") for gid in batch.ids[batch.cpu].tolist()
    )
    assert flagged == list(range(1, 8))
    device = DevicePrefetcher(_loader(manifest, "device"), device="cpu", **PIXELS)
    on_device = _by_id(device)
    in_workers = _by_id(DevicePrefetcher(_loader(manifest, "opencv"), device="cpu", **PIXELS))
    assert sorted(on_device) == sorted(in_workers) == list(range(12))
    for gid in flagged:  # the same decode up to the worker's reduced-scale rounding
        diff = (on_device[gid] - in_workers[gid]).abs()
        assert float(diff.max()) <= 8 and float(diff.mean()) <= 1.5, gid
    assert device.decode_counts == {
        "device": 5, "orientation": 7, "format": 0, "error": 0, "failed": 0
    }  # fmt: skip


def test_counts_add_up_over_the_prefetchers_life_and_rows_land_once(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [5, 4], image_bytes=lambda g: oriented_jpeg(1, g))
    prefetcher = DevicePrefetcher(_loader(manifest, "device"), device="cpu", **PIXELS)
    for epoch in range(3):
        assert sum(len(b.ids) for b in prefetcher) == 9
        assert prefetcher.decode_counts == dict.fromkeys(ROW_COUNTS, 0) | {
            "device": 9 * (epoch + 1)
        }
    in_workers = DevicePrefetcher(_loader(manifest, "opencv"), device="cpu")
    assert sum(len(b.ids) for b in in_workers) == 9
    assert in_workers.decode_counts == dict.fromkeys(ROW_COUNTS, 0)


@pytest.mark.parametrize(("oriented", "warned"), [(1, False), (2, True)])
def test_more_than_one_percent_off_the_device_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, oriented: int, warned: bool
) -> None:
    """100 rows, ``oriented`` of them on the CPU: 1% is within the bound, 2% is not."""

    def images(gid: int) -> bytes:
        return oriented_jpeg(6 if gid < oriented else 1, seed=gid)

    manifest = write_test_shards(tmp_path, [50, 50], image_bytes=images)
    loader = _loader(manifest, DeviceDecoder(8, train=False), batch_size=25)
    prefetcher = DevicePrefetcher(loader, device="cpu")
    with caplog.at_level(logging.WARNING, logger="shardfeed.loader"):
        for _ in range(2):
            assert sum(len(b.ids) for b in prefetcher) == 100
    messages = [r.getMessage() for r in caplog.records if "device decode:" in r.getMessage()]
    if warned:
        [message] = messages
        assert "2 of 100 rows (2.0%) were not decoded on cpu (orientation 2)" in message
    else:
        assert messages == []
