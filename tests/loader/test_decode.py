"""Tests for loader/decode.py and its header parser loader/_imagesize.py.

Images are made with cv2.imencode. ``tests/data/cmyk_16x8.jpg`` (OpenCV cannot write CMYK) was
made once with Pillow 13: ``Image.new("CMYK", (16, 8), (0, 255, 255, 0))`` (red), the right
8x8 block pasted as ``(255, 255, 0, 0)`` (blue), saved as JPEG quality 95 (Adobe APP14 marker).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.decode import (
    CropBox,
    DecodeError,
    ImageDecoder,
    NoDecode,
    center_crop,
    eval_transform,
    random_resized_crop,
    train_transform,
)
from shards.imageinfo import image_info

DATA = Path(__file__).resolve().parents[1] / "data"


def image_size(data: bytes | memoryview, fmt: str | None = None) -> tuple[int, int] | None:
    """(width, height) as the decoder reads it, optionally only for one format."""
    info = image_info(data)
    if info is None or (fmt is not None and info.format != fmt):
        return None
    return info.width, info.height


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    return image_size(data, "jpg")


def png_size(data: bytes | memoryview) -> tuple[int, int] | None:
    return image_size(data, "png")


def webp_size(data: bytes | memoryview) -> tuple[int, int] | None:
    return image_size(data, "webp")


def encode(image: np.ndarray, ext: str = ".png", *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def imdecode(data: bytes, flags: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert image is not None
    return image


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 40.0)], axis=-1
    ).astype(np.uint8)


def solid_bgr(b: int, g: int, r: int, height: int = 32, width: int = 48) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (b, g, r)
    return image


def out_for(size: int) -> np.ndarray:
    return np.full((size, size, 3), 7, np.uint8)


# --- header parser -------------------------------------------------------------------------


@pytest.mark.parametrize("width, height", [(1, 1), (48, 32), (33, 71), (500, 375)])
def test_header_sizes_match_what_opencv_decodes(width: int, height: int) -> None:
    image = noise(height, width)
    jpeg = encode(image, ".jpg")
    progressive = encode(image, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    png = encode(image, ".png")
    lossy = encode(image, ".webp", cv2.IMWRITE_WEBP_QUALITY, 80)
    lossless = encode(image, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101)
    for data in (jpeg, progressive, png, lossy, lossless):
        assert image_size(data) == (width, height)
        assert image_size(memoryview(data)) == (width, height)
    assert jpeg_size(jpeg) == png_size(png) == webp_size(lossy) == (width, height)


def test_jpeg_size_skips_large_app_segments_and_fill_bytes() -> None:
    jpeg = encode(noise(20, 30), ".jpg")
    app1 = b"\xff\xe1" + (2 + 60000).to_bytes(2, "big") + b"\0" * 60000
    padded = jpeg[:2] + b"\xff\xff" + app1 + jpeg[2:]
    assert jpeg_size(padded) == (30, 20)
    assert imdecode(padded, cv2.IMREAD_COLOR).shape == (20, 30, 3)


def test_webp_extended_header() -> None:
    chunk = b"VP8X" + (10).to_bytes(4, "little") + b"\x10\0\0\0"
    chunk += (639).to_bytes(3, "little") + (479).to_bytes(3, "little")
    data = b"RIFF" + (4 + len(chunk)).to_bytes(4, "little") + b"WEBP" + chunk
    assert webp_size(data) == image_size(data) == (640, 480)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        b"\xff\xd8\xff\xe0\x00",
        b"\xff\xd8\xff\xe0\x00\x01",  # segment length < 2
        b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 20,  # scan before any frame header
        b"\xff\xd8\x00\x00\x00\x00",  # not a marker
        b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x10\x03",  # height 0 (DNL)
        b"\x89PNG\r\n\x1a\n" + b"\0" * 8,
        b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDX" + b"\0" * 8,
        b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 14,
        b"RIFF\0\0\0\0WEBPVP8L" + b"\0" * 14,
        b"RIFF\0\0\0\0WEBPABCD" + b"\0" * 14,
        b"GIF89a" + b"\0" * 30,
    ],
)
def test_header_parser_returns_none_on_what_it_cannot_read(data: bytes) -> None:
    assert image_size(data) is None


def test_truncated_jpeg_header_gives_none() -> None:
    jpeg = encode(noise(20, 30), ".jpg")
    sof = jpeg.index(b"\xff\xc0")
    assert jpeg_size(jpeg[: sof + 6]) is None
    assert jpeg_size(jpeg[: sof + 10]) == (30, 20)


# --- colour handling -----------------------------------------------------------------------


def test_jpeg_comes_out_rgb() -> None:
    data = encode(solid_bgr(20, 60, 220), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95)
    out = out_for(16)
    assert eval_transform(16)(data, out, np.random.default_rng(0)) == len(data)
    assert np.abs(out.astype(int) - (220, 60, 20)).max() <= 3


def test_grayscale_jpeg_comes_out_three_equal_channels() -> None:
    data = encode(np.full((24, 40), 77, np.uint8), ".jpg")
    out = out_for(16)
    eval_transform(16)(data, out, np.random.default_rng(0))
    assert (out == 77).all()


def test_cmyk_jpeg_comes_out_rgb() -> None:
    data = (DATA / "cmyk_16x8.jpg").read_bytes()
    assert data[2:4] == b"\xff\xee"  # Adobe marker: a real CMYK JPEG
    decoder = ImageDecoder(8, train=False)
    assert center_crop(16, 8, 8) == CropBox(0, 4, 7, 7)  # red columns 4-7, blue 8-10
    out = out_for(8)
    decoder(data, out, np.random.default_rng(0))
    assert np.abs(out[4, 0].astype(int) - (255, 0, 0)).max() <= 4
    assert np.abs(out[4, 7].astype(int) - (0, 0, 255)).max() <= 4


def test_png_alpha_is_dropped() -> None:
    bgra = np.empty((16, 16, 4), np.uint8)
    bgra[:] = (10, 20, 30, 0)
    out = out_for(16)
    eval_transform(16)(encode(bgra), out, np.random.default_rng(0))
    assert (out == (30, 20, 10)).all()


def test_16_bit_png_is_scaled_to_8_bits() -> None:
    image = np.empty((16, 16, 3), np.uint16)
    image[:] = (0x0102, 0x80FF, 0xABCD)
    out = out_for(16)
    eval_transform(16)(encode(image), out, np.random.default_rng(0))
    assert (out == (0xAB, 0x80, 0x01)).all()


def test_gray_16_bit_png_is_three_channels() -> None:
    out = out_for(8)
    eval_transform(8)(encode(np.full((9, 9), 0x1234, np.uint16)), out, np.random.default_rng(0))
    assert (out == 0x12).all()


def test_lossless_webp_exact() -> None:
    out = out_for(8)
    data = encode(solid_bgr(1, 2, 3, 10, 10), ".webp", cv2.IMWRITE_WEBP_QUALITY, 101)
    eval_transform(8)(data, out, np.random.default_rng(0))
    assert (out == (3, 2, 1)).all()


# --- geometry ------------------------------------------------------------------------------


def test_center_crop_box() -> None:
    # 500x375 at 224: resize to 256 keeps 224/256 of the shorter side, centred.
    assert center_crop(500, 375, 224) == CropBox(24, 86, 328, 328)
    assert center_crop(375, 500, 224) == CropBox(86, 24, 328, 328)
    assert center_crop(384, 256, 224) == CropBox(16, 80, 224, 224)
    assert center_crop(1, 1, 224) == CropBox(0, 0, 1, 1)


def test_eval_is_exact_centre_crop_when_no_resampling_is_needed() -> None:
    image = noise(256, 384)  # shorter side already 256 = int(224 / 0.875)
    out = out_for(224)
    eval_transform(224)(encode(image), out, np.random.default_rng(0))
    assert np.array_equal(out, image[16:240, 80:304, ::-1])


def test_eval_downscale_geometry_for_tall_image() -> None:
    image = noise(768, 512, seed=3)
    out = out_for(224)
    eval_transform(224, reduced_decode=False)(encode(image), out, np.random.default_rng(0))
    box = center_crop(512, 768, 224)
    assert box == CropBox(160, 32, 448, 448)
    crop = np.ascontiguousarray(image[160:608, 32:480])
    expected = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_LINEAR)[..., ::-1]
    assert np.array_equal(out, expected)


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    entry = b"\x01\x12" + (3).to_bytes(2, "big") + (1).to_bytes(4, "big")
    entry += orientation.to_bytes(2, "big") + b"\0\0"
    tiff = b"MM\x00\x2a" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + entry + b"\0" * 4
    payload = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_exif_orientation_is_ignored() -> None:
    image = smooth(64, 96)
    data = with_exif_orientation(encode(image, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 100), 6)
    rotated = imdecode(data, cv2.IMREAD_COLOR)
    assert rotated.shape == (96, 64, 3)  # OpenCV would rotate it by default
    assert image_size(data) == (96, 64)
    for reduced in (False, True):
        out = out_for(56)
        eval_transform(56, reduced_decode=reduced)(data, out, np.random.default_rng(0))
        box = center_crop(96, 64, 56)
        crop = image[box.top : box.top + box.height, box.left : box.left + box.width]
        expected = cv2.resize(np.ascontiguousarray(crop), (56, 56))[..., ::-1]
        assert np.abs(out.astype(int) - expected).mean() < 2


def test_one_pixel_image() -> None:
    data = encode(solid_bgr(9, 8, 7, 1, 1))
    for decoder in (train_transform(5), eval_transform(5)):
        out = out_for(5)
        decoder(data, out, np.random.default_rng(0))
        assert (out == (7, 8, 9)).all()


def test_eval_draws_nothing_from_rng() -> None:
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    eval_transform(32)(encode(noise(40, 50), ".jpg"), out_for(32), rng)
    assert rng.bit_generator.state == before


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 3000),
    height=st.integers(1, 3000),
    seed=st.integers(0, 2**32 - 1),
    lo=st.floats(0.01, 1.0),
    log_ratio=st.floats(-1.5, 1.5),
)
def test_random_resized_crop_stays_inside(
    width: int, height: int, seed: int, lo: float, log_ratio: float
) -> None:
    ratio = (math.exp(min(0.0, log_ratio)), math.exp(max(0.0, log_ratio)))
    box = random_resized_crop(width, height, np.random.default_rng(seed), (lo, 1.0), ratio)
    assert box.height >= 1 and box.width >= 1
    assert 0 <= box.top and box.top + box.height <= height
    assert 0 <= box.left and box.left + box.width <= width


def test_random_resized_crop_distribution() -> None:
    # On a square image with area fraction <= 0.5 every first try fits, so the draws are exactly
    # uniform in area fraction and log-uniform in aspect ratio.
    rng = np.random.default_rng(0)
    boxes = [random_resized_crop(1000, 1000, rng, (0.08, 0.5)) for _ in range(3000)]
    fractions = np.array([b.height * b.width / 1e6 for b in boxes])
    log_aspect = np.array([math.log(b.width / b.height) for b in boxes])
    assert fractions.min() >= 0.079 and fractions.max() <= 0.501
    assert abs(fractions.mean() - 0.29) < 0.01
    assert abs(log_aspect.mean()) < 0.015
    assert log_aspect.min() >= math.log(3 / 4) - 0.01 and log_aspect.max() <= math.log(4 / 3) + 0.01
    lefts = np.array([b.left / (1000 - b.width) for b in boxes])
    assert abs(lefts.mean() - 0.5) < 0.03


def test_random_resized_crop_fallback_is_centred_with_bounded_ratio() -> None:
    rng = np.random.default_rng(0)
    assert random_resized_crop(1000, 10, rng, (0.99, 1.0)) == CropBox(0, 493, 10, 13)
    assert random_resized_crop(10, 1000, rng, (0.99, 1.0)) == CropBox(493, 0, 13, 10)


def test_train_is_deterministic_given_the_seed() -> None:
    data = encode(noise(120, 160), ".jpg")
    decoder = train_transform(32)

    def run(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        outs = np.empty((6, 32, 32, 3), np.uint8)
        for out in outs:
            decoder(data, out, rng)
        return outs

    assert np.array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_train_flip_mirrors_the_whole_crop() -> None:
    image = noise(40, 40, seed=9)
    full = cv2.resize(image, (20, 20), interpolation=cv2.INTER_LINEAR)[..., ::-1]
    decoder = train_transform(20, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    data = encode(image)
    flipped = 0
    for seed in range(24):
        out = out_for(20)
        decoder(data, out, np.random.default_rng(seed))
        if np.array_equal(out, full[:, ::-1]):
            flipped += 1
        else:
            assert np.array_equal(out, full)
    assert 0 < flipped < 24


def test_output_is_the_same_from_threads() -> None:
    data = [encode(noise(60, 80, seed), ".jpg") for seed in range(8)]
    decoder = train_transform(24)

    def one(i: int) -> np.ndarray:
        out = out_for(24)
        decoder(data[i], out, np.random.default_rng(i))
        return out

    serial = [one(i) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(one, range(8)))
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded, strict=True))


# --- reduced decoding ----------------------------------------------------------------------


_REDUCED = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


@pytest.mark.parametrize(
    "size, side, factor",
    [(64, 673, 8), (84, 672, 8), (85, 673, 4), (168, 672, 4), (169, 672, 2), (336, 672, 2)]
    + [(337, 672, 1), (600, 673, 1)],
)
def test_reduced_decode_uses_the_largest_factor_that_still_downscales(
    size: int, side: int, factor: int
) -> None:
    data = encode(smooth(768, 1024), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90)
    out = out_for(size)
    ImageDecoder(size, train=False, partial_decode=False)(data, out, np.random.default_rng(0))
    box = center_crop(1024, 768, size)
    assert box.height == box.width == side and side >= factor * size
    small = imdecode(data, _REDUCED[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
    assert small.shape == (768 // factor, 1024 // factor, 3)
    top, left = round(box.top / factor), round(box.left / factor)
    bottom, right = round((box.top + side) / factor), round((box.left + side) / factor)
    crop = np.ascontiguousarray(small[top:bottom, left:right])
    assert np.array_equal(out, cv2.resize(crop, (size, size))[..., ::-1])


def test_reduced_decode_is_close_to_full_decode_and_draws_the_same_crops() -> None:
    data = encode(smooth(900, 1200), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90)
    for train in (False, True):
        fast, slow = out_for(96), out_for(96)
        rng_fast, rng_slow = np.random.default_rng(4), np.random.default_rng(4)
        ImageDecoder(96, train=train)(data, fast, rng_fast)
        ImageDecoder(96, train=train, reduced_decode=False)(data, slow, rng_slow)
        assert rng_fast.bit_generator.state == rng_slow.bit_generator.state
        assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 3


def test_small_images_are_upscaled_without_reduction() -> None:
    image = noise(10, 12)
    out = out_for(32)
    data = encode(image, ".png")
    eval_transform(32)(data, out, np.random.default_rng(0))
    expected = cv2.resize(np.ascontiguousarray(image[0:9, 2:11]), (32, 32))[..., ::-1]
    assert center_crop(12, 10, 32) == CropBox(0, 2, 9, 9)  # Python rounds halves to even
    assert np.array_equal(out, expected)


# --- inputs and errors ---------------------------------------------------------------------


def test_memoryview_slice_decodes_like_bytes() -> None:
    data = encode(noise(50, 70), ".jpg")
    tar_like = bytearray(b"x" * 100 + data + b"y" * 100)
    view = memoryview(tar_like)[100 : 100 + len(data)]
    a, b = out_for(32), out_for(32)
    assert train_transform(32)(view, a, np.random.default_rng(3)) == len(data)
    train_transform(32)(data, b, np.random.default_rng(3))
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 40, b"\x89PNG\r\n\x1a\n" + b"x"],
)
@pytest.mark.parametrize("train", [False, True])
def test_undecodable_bytes_raise_decode_error(data: bytes, train: bool) -> None:
    with pytest.raises(DecodeError, match=f"got {len(data)} bytes"):
        ImageDecoder(16, train=train)(data, out_for(16), np.random.default_rng(0))


def test_truncated_jpeg_raises_decode_error() -> None:
    data = encode(noise(64, 64), ".jpg")
    with pytest.raises(DecodeError):
        eval_transform(16)(data[: len(data) // 2], out_for(16), np.random.default_rng(0))


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(DecodeError, ValueError)


@pytest.mark.parametrize(
    "out",
    [
        np.zeros((16, 16, 3), np.float32),
        np.zeros((16, 15, 3), np.uint8),
        np.zeros((16, 16, 4), np.uint8),
        np.zeros((16, 32, 3), np.uint8)[:, ::2],
    ],
)
def test_bad_out_array_is_rejected(out: np.ndarray) -> None:
    data = encode(noise(20, 20))
    with pytest.raises(ValueError, match="expected a C-contiguous uint8 out"):
        eval_transform(16)(data, out, np.random.default_rng(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0}, "image_size >= 1"),
        ({"image_size": -3}, "image_size >= 1"),
        ({"scale": (0.5, 0.2)}, "scale"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": (0.5, 1.5)}, "scale"),
        ({"ratio": (2.0, 1.0)}, "ratio"),
        ({"ratio": (-1.0, 1.0)}, "ratio"),
    ],
)
def test_bad_decoder_settings_are_rejected(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"image_size": 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        ImageDecoder(train=True, **args)  # type: ignore[arg-type]


# --- NoDecode ------------------------------------------------------------------------------


def test_no_decode_counts_bytes_and_leaves_out_and_rng_alone() -> None:
    data = encode(noise(64, 64), ".jpg")
    out = np.zeros((0, 0, 3), np.uint8)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    decoder = NoDecode()
    assert decoder.image_size == 0
    assert decoder(data, out, rng) == len(data)
    assert decoder(memoryview(bytearray(data)), out, rng) == len(data)
    assert rng.bit_generator.state == state
    canvas = out_for(4)
    decoder(encode(noise(8, 8)), canvas, rng)
    assert (canvas == 7).all()


@pytest.mark.parametrize("data", [b"", b"GIF89a....", b"\0" * 5000])
def test_no_decode_rejects_non_images(data: bytes) -> None:
    with pytest.raises(DecodeError, match=f"got {len(data)} bytes"):
        NoDecode()(data, np.zeros((0, 0, 3), np.uint8), np.random.default_rng(0))
