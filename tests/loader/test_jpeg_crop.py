"""Tests for the partial JPEG decode (loader/crop.py over shards/jpegturbo.py).

The promise: the crop box drawn for a generator state does not change, and the output matches
a full decode closely. The reference is the OpenCV path (``partial_decode=False``), which
decodes every pixel of the image at the same DCT scale and then crops the same box; the metric
is PSNR >= 40 dB and mean absolute difference <= 1.0 per image (uint8 levels). How a DCT-scaled
decode compares with a full-resolution one is the OpenCV reduced decode's choice, made before
this and tested in tests/loader/test_decode.py; both paths pick the same scale.

No OpenCV call here runs on OpenCV's thread pool in this process (``cvtColor`` of a large image
would start it): a DataLoader worker forked after that deadlocks in ``cv2.setNumThreads``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from loader.crop import decode_crop, pick_scale
from loader.decode import DecodeError, ImageDecoder
from shards.jpegturbo import JpegError, available, decode_region, scaled_size

pytestmark = pytest.mark.skipif(
    not available(), reason="shards/_jpegturbo was not built (no libjpeg headers at install)"
)
DATA = Path(__file__).resolve().parents[1] / "data"


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """Photo-like BGR: gradients, a few shapes with hard edges, mild sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack(
        [255 * x / width, 255 * y / height, 128 + 90 * np.sin(x / 23.0 + y / 37.0)], axis=-1
    )
    for _ in range(6):
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        radius = int(rng.integers(8, max(9, min(height, width) // 3)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, (cx, cy), radius, color, -1)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90, *params])
    assert ok
    return buf.tobytes()


def out_for(size: int) -> np.ndarray:
    return np.full((size, size, 3), 7, np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


VARIANTS = {
    "420": (),
    "444": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
    "progressive": (cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("size", [24, 64, 160])
def test_same_boxes_and_close_to_the_full_decode(variant: str, size: int) -> None:
    for seed, (h, w) in enumerate([(480, 640), (333, 517), (700, 400)]):
        data = jpeg(photo(h, w, seed), *VARIANTS[variant])
        for train in (True, False):
            for draw in range(6):
                fast, reference = out_for(size), out_for(size)
                rng_fast = np.random.default_rng([seed, draw])
                rng_slow = np.random.default_rng([seed, draw])
                ImageDecoder(size, train=train)(data, fast, rng_fast)
                ImageDecoder(size, train=train, partial_decode=False)(data, reference, rng_slow)
                assert rng_fast.bit_generator.state == rng_slow.bit_generator.state
                where = (variant, size, seed, train, draw)
                assert psnr(fast, reference) >= 40, where
                assert np.abs(fast.astype(int) - reference.astype(int)).mean() <= 1.0, where


def test_every_scale_is_reached_and_matches_opencv_at_that_scale() -> None:
    image = photo(800, 1024, 7)
    data = jpeg(image)
    flags = {1: cv2.IMREAD_REDUCED_COLOR_8, 2: cv2.IMREAD_REDUCED_COLOR_4}
    flags |= {4: cv2.IMREAD_REDUCED_COLOR_2, 8: cv2.IMREAD_COLOR}
    for m, size in [(1, 80), (2, 160), (4, 300), (8, 700)]:
        assert pick_scale(720, 760, size) == m
        region = decode_crop(data, (1024, 800), (40, 200, 720, 760), size)
        whole = cv2.imdecode(np.frombuffer(data, np.uint8), flags[m])[..., ::-1]
        assert whole.shape[:2] == (scaled_size(800, m), scaled_size(1024, m))
        top, left = round(40 * m / 8), round(200 * m / 8)
        expected = whole[top : top + region.shape[0], left : left + region.shape[1]]
        assert region.shape[0] >= min(size, 720 * m // 8) and region.shape[1] >= 760 * m // 8 - 1
        assert psnr(region, expected) >= 40 and np.abs(region.astype(int) - expected).mean() <= 1


def test_pick_scale_keeps_at_least_the_output_size() -> None:
    for side in range(1, 2000, 37):
        for size in (16, 224, 300):
            m = pick_scale(side, side + 5, size)
            assert m in (1, 2, 4, 8)
            assert m == 8 or side * m // 8 >= size
            finer = {1: None, 2: 1, 4: 2, 8: 4}[m]
            assert finer is None or side * finer < 8 * size


def test_cmyk_falls_back_to_opencv_with_the_same_box() -> None:
    data = (DATA / "cmyk_16x8.jpg").read_bytes()
    with pytest.raises(JpegError):
        decode_crop(data, (16, 8), (0, 0, 8, 16), 4)
    fast, slow = np.empty((4, 4, 3), np.uint8), np.empty((4, 4, 3), np.uint8)
    rng_fast, rng_slow = np.random.default_rng(3), np.random.default_rng(3)
    ImageDecoder(4, train=True)(data, fast, rng_fast)
    ImageDecoder(4, train=True, partial_decode=False)(data, slow, rng_slow)
    assert np.array_equal(fast, slow)
    assert rng_fast.bit_generator.state == rng_slow.bit_generator.state


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95, 0.999])
def test_truncated_files_are_rejected_as_before(cut: int) -> None:
    data = jpeg(photo(256, 256, 1))
    broken = data[: int(len(data) * cut)]
    with pytest.raises(JpegError):
        decode_crop(broken, (256, 256), (0, 0, 16, 16), 8)
    for partial in (True, False):
        with pytest.raises(DecodeError):
            ImageDecoder(16, train=False, partial_decode=partial)(
                broken, np.empty((16, 16, 3), np.uint8), np.random.default_rng(0)
            )


def test_damage_in_the_rows_read_falls_back_to_the_full_decode() -> None:
    data = bytearray(jpeg(photo(256, 256, 2)))
    sos = data.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    for i in range(start + 5, start + 200, 7):
        data[i] = 0xFF if data[i] != 0xFF else 0x00
    with pytest.raises(JpegError):
        decode_crop(bytes(data), (256, 256), (0, 0, 256, 256), 64)
    fast, slow = np.empty((64, 64, 3), np.uint8), np.empty((64, 64, 3), np.uint8)
    outcomes = []
    for decoder, out in ((ImageDecoder(64, train=False), fast),
                         (ImageDecoder(64, train=False, partial_decode=False), slow)):  # fmt: skip
        try:
            decoder(bytes(data), out, np.random.default_rng(0))
            outcomes.append("ok")
        except DecodeError:
            outcomes.append("error")
    assert outcomes[0] == outcomes[1]
    if outcomes[0] == "ok":
        assert np.array_equal(fast, slow)


def test_region_outside_the_image_and_bad_scales_are_refused() -> None:
    data = jpeg(photo(64, 96, 3))
    with pytest.raises(JpegError, match="outside"):
        decode_region(data, 8, 60, 0, 10, 10)
    with pytest.raises(JpegError, match="outside"):
        decode_region(data, 4, 0, 40, 4, 10)
    with pytest.raises(ValueError, match="scale numerator"):
        decode_region(data, 9, 0, 0, 4, 4)
    with pytest.raises(JpegError):
        decode_region(b"\xff\xd8\xff\xe0not a jpeg", 8, 0, 0, 1, 1)
    assert decode_region(data, 8, 63, 95, 1, 1).shape == (1, 1, 3)
