"""``--verify decode`` by a 1/8-scale scan (shards/validate.py over shards/jpegturbo.py) rejects
exactly what the full OpenCV decode rejects.

The corpus is made here from a few valid JPEGs (baseline 4:2:0 and 4:4:4, progressive, with
restart markers, grayscale, and the CMYK file OpenCV cannot write): each cut at ~40 offsets (as
it is, which the structural check already rejects, and with an end-of-image marker appended, so
that only the decoder can tell), with 1-3 bytes of entropy data flipped, and with a marker code,
a segment length or a segment's first byte replaced. For every variant the scan's verdict
(accepted, or rejected) equals the full decode's, and both kinds of verdict occur in each group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from shards import jpegturbo
from shards.validate import ImageRejected, check_image

pytestmark = pytest.mark.skipif(
    not jpegturbo.available(), reason="shards/_jpegturbo was not built (no libjpeg headers)"
)
CMYK = Path(__file__).resolve().parents[1] / "data" / "cmyk_16x8.jpg"


def verdict(data: bytes, full: bool) -> str:
    try:
        check_image(data, "decode", full_decode=full)
    except ImageRejected:
        return "rejected"
    return "accepted"


def bases() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:128]
    image = np.stack([x * 2.0, y * 2.0, 128 + 60 * np.sin(x / 5)], axis=-1)
    image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
    options = {
        "420": [],
        "444": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
        "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
        "restarts": [cv2.IMWRITE_JPEG_RST_INTERVAL, 2],
    }
    out = {name: cv2.imencode(".jpg", image, flags)[1].tobytes() for name, flags in options.items()}
    out["gray"] = cv2.imencode(".jpg", image[..., 0])[1].tobytes()
    out["cmyk"] = CMYK.read_bytes()
    return out


def variants(data: bytes, rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    sos = data.find(b"\xff\xda")
    scan_start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    for cut in range(2, len(data), max(1, len(data) // 40)):
        yield "cut", data[:cut]
        yield "cut+eoi", data[:cut] + b"\xff\xd9"
    for t in range(40):
        flipped = bytearray(data)
        for _ in range(1 + t % 3):
            i = int(rng.integers(scan_start, len(data) - 2))
            flipped[i] ^= int(rng.integers(1, 256))
        yield "flip", bytes(flipped)
    markers = [i for i in range(2, sos + 1) if data[i] == 0xFF and data[i + 1] not in (0, 0xFF)]
    for t in range(40):
        bad = bytearray(data)
        i = markers[int(rng.integers(len(markers)))]
        offset = 1 + t % 3  # the marker code, a length byte, the segment's first byte
        bad[i + offset] = int(rng.integers(0xC0, 0x100)) if offset == 1 else int(rng.integers(256))
        yield "marker", bytes(bad)


def test_the_scan_rejects_exactly_what_the_full_decode_rejects() -> None:
    rng = np.random.default_rng(14)
    seen: Counter[tuple[str, str]] = Counter()
    disagree = []
    for name, data in bases().items():
        assert verdict(data, full=False) == verdict(data, full=True) == "accepted", name
        for kind, variant in variants(data, rng):
            scan, full = verdict(variant, full=False), verdict(variant, full=True)
            seen[kind, full] += 1
            if scan != full:
                disagree.append((name, kind, len(variant), scan, full))
    assert not disagree, disagree[:10]
    for kind in ("cut+eoi", "flip", "marker"):
        assert seen[kind, "accepted"] and seen[kind, "rejected"], seen
    assert seen["cut", "rejected"] and not seen["cut", "accepted"]


def test_scan_reports_size_damage_and_running_out() -> None:
    data = bases()["progressive"]
    clean = jpegturbo.scan_jpeg(data)
    assert (clean.width, clean.height, clean.warnings, clean.ran_out) == (16, 12, 0, False)
    short = jpegturbo.scan_jpeg(data[: len(data) // 3])
    assert short.ran_out and short.warnings >= 1 and short.first_warning
    with pytest.raises(jpegturbo.JpegError):
        jpegturbo.scan_jpeg(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(jpegturbo.JpegError):
        jpegturbo.scan_jpeg(b"")


def test_reasons_name_the_damage() -> None:
    data = bases()["420"]
    middle = (data.find(b"\xff\xda") + len(data)) // 2
    stray_marker = data[:middle] + b"\xff\xd0" + data[middle:]
    with pytest.raises(ImageRejected, match="^corrupt JPG: premature end of data segment$"):
        check_image(stray_marker, "decode")
    assert verdict(stray_marker, full=True) == "rejected"
    progressive = bases()["progressive"]
    first_scan = progressive.find(b"\xff\xda") + 20
    ran_out = []
    for cut in range(first_scan, len(progressive), 10):
        variant = progressive[:cut] + b"\xff\xd9"
        try:
            scan = jpegturbo.scan_jpeg(variant)
        except jpegturbo.JpegError:  # cut inside a table between scans: fatal, not a warning
            continue
        if scan.warnings and not scan.first_warning.startswith("Corrupt"):
            assert scan.ran_out, scan
            ran_out.append(variant)
    assert ran_out
    with pytest.raises(ImageRejected, match="^undecodable JPG: the data ends before"):
        check_image(ran_out[0], "decode")
    assert verdict(ran_out[0], full=True) == "rejected"
    trailing = data[:-2] + b"\x00\x00\x00\xff\xd9"
    assert check_image(trailing, "decode").data == trailing
    assert verdict(trailing, full=True) == "accepted"
