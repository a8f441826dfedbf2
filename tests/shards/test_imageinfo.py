"""Tests for shards.imageinfo: sizes and channels from headers, completeness, garbage."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shards.imageinfo import ImageInfo, exif_orientation, image_info, is_complete
from tests.helpers import with_exif_orientation
from tests.shards.helpers import DATA, encode, make_pixels

W, H = 37, 23  # not square and not equal, so a width/height swap shows


def _encode(ext: str, channels: int, params: list[int] | None = None) -> bytes:
    return bytes(encode(ext, make_pixels(7, channels, W, H), params))


@pytest.mark.parametrize(
    ("ext", "channels", "params", "expected"),
    [
        (".jpg", 3, None, ImageInfo("jpg", W, H, 3)),
        (".jpg", 1, None, ImageInfo("jpg", W, H, 1)),
        (".jpg", 3, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], ImageInfo("jpg", W, H, 3, True)),
        (".png", 3, None, ImageInfo("png", W, H, 3)),
        (".png", 1, None, ImageInfo("png", W, H, 1)),
        (".png", 4, None, ImageInfo("png", W, H, 4)),
        (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 80], ImageInfo("webp", W, H, 3)),  # VP8
        (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 101], ImageInfo("webp", W, H, 3)),  # VP8L
        (".webp", 4, [cv2.IMWRITE_WEBP_QUALITY, 101], ImageInfo("webp", W, H, 4)),  # VP8L+alpha
        (".webp", 4, [cv2.IMWRITE_WEBP_QUALITY, 80], ImageInfo("webp", W, H, 4)),  # VP8X
    ],
)
def test_image_info_reads_format_size_and_channels(
    ext: str, channels: int, params: list[int] | None, expected: ImageInfo
) -> None:
    data = _encode(ext, channels, params)
    assert image_info(data) == expected
    assert image_info(memoryview(data)) == expected


def test_image_info_of_cmyk_jpeg_says_four_channels() -> None:
    data = (DATA / "cmyk.jpg").read_bytes()
    assert image_info(data) == ImageInfo("jpg", 40, 30, 4)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (30, 40, 3)


def test_image_info_reads_sample_precision_and_baseline_frames() -> None:
    pixels16 = (make_pixels(3, 3, W, H).astype(np.uint16) * 257).astype(np.uint16)
    assert image_info(bytes(encode(".png", pixels16, None))) == ImageInfo("png", W, H, 3, bits=16)
    baseline = image_info(_encode(".jpg", 3))
    assert baseline is not None and not baseline.progressive and baseline.bits == 8


def test_image_info_sniffs_bytes_not_names() -> None:
    assert image_info(_encode(".png", 3)) == ImageInfo("png", W, H, 3)


@pytest.mark.parametrize(
    ("ext", "channels", "params"),
    [
        (".jpg", 3, None),
        (".jpg", 3, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".png", 3, None),
        (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 80]),
        (".webp", 4, [cv2.IMWRITE_WEBP_QUALITY, 101]),
    ],
)
def test_is_complete_on_whole_and_cut_files(
    ext: str, channels: int, params: list[int] | None
) -> None:
    data = _encode(ext, channels, params)
    assert is_complete(data)
    assert is_complete(memoryview(data))
    for cut in (len(data) // 3, len(data) // 2, len(data) - 13):
        assert not is_complete(data[:cut]), f"{ext} cut to {cut} of {len(data)} bytes"


def test_is_complete_jpeg_cut_before_scan() -> None:
    data = _encode(".jpg", 3)
    sos = data.index(b"\xff\xda")
    assert image_info(data[:sos]) == ImageInfo("jpg", W, H, 3)
    assert not is_complete(data[:sos])


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"hello world, not an image",
        bytes(range(256)) * 4,
        b"\xff\xd8\xff\xe0" + b"\0" * 64,  # JPEG magic, then nonsense
        b"\xff\xd8\xff",
        b"\x89PNG\r\n\x1a\n",  # PNG signature alone
        b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rXXXX" + b"\0" * 17,  # no IHDR
        b"RIFF\x10\0\0\0WEBP",  # WebP header alone
        b"RIFF\x80\0\0\0WEBPABCD" + b"\0" * 40,  # unknown WebP chunk, cut
        b"GIF89a" + b"\0" * 40,
    ],
)
def test_garbage_gives_none_and_incomplete(garbage: bytes) -> None:
    assert image_info(garbage) is None
    assert not is_complete(garbage)


def test_png_with_zero_width_is_rejected() -> None:
    data = bytearray(_encode(".png", 3))
    data[16:20] = b"\0\0\0\0"
    assert image_info(bytes(data)) is None


def test_jpeg_with_zero_height_is_rejected() -> None:
    data = bytearray(_encode(".jpg", 3))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 7] = b"\0\0"
    assert image_info(bytes(data)) is None


@pytest.mark.parametrize("big_endian", [False, True])
def test_jpeg_exif_orientation_is_read_for_each_of_the_eight(big_endian: bool) -> None:
    plain = encode(".jpg", make_pixels(0, width=20, height=12))
    assert image_info(plain) == ImageInfo("jpg", 20, 12, 3)
    for orientation in range(1, 9):
        info = image_info(with_exif_orientation(plain, orientation, big_endian=big_endian))
        assert info == ImageInfo("jpg", 20, 12, 3, orientation=orientation)


@pytest.mark.parametrize("value", [0, 9, 0xFFFF])
def test_an_orientation_outside_one_to_eight_reads_as_one(value: int) -> None:
    plain = encode(".jpg", make_pixels(0, width=20, height=12))
    assert image_info(with_exif_orientation(plain, value)) == ImageInfo("jpg", 20, 12, 3)


def test_a_cut_or_foreign_app1_segment_reads_as_one() -> None:
    tagged = with_exif_orientation(b"\xff\xd8", 6)[6:]  # the segment's payload
    entry_end = len(tagged) - 4  # the next-IFD offset that follows is not needed
    for cut in range(entry_end):
        assert exif_orientation(tagged[:cut]) == 1
    assert exif_orientation(tagged[:entry_end]) == exif_orientation(tagged) == 6
    assert exif_orientation(b"http://ns.adobe.com/xap/1.0/\0" + tagged) == 1


@given(st.binary(max_size=64))
def test_exif_orientation_never_raises(payload: bytes) -> None:
    assert 1 <= exif_orientation(b"Exif\0\0" + payload) <= 8
    assert 1 <= exif_orientation(payload) <= 8
