"""Shard builder test helpers: image bytes, a "quirky" ImageNet-style folder, small clean ones.

The quirky folder holds every oddity a folder can hold as real bytes, each with the outcome
the build must give it (sharded with known metadata, or skipped with a known reason).
``data/cmyk.jpg`` is
a 40x30 four-component (Adobe CMYK) baseline JPEG written once with libjpeg's
``jpeg_set_defaults`` + ``in_color_space = JCS_CMYK``; OpenCV cannot encode CMYK itself.

Test modules import these by name; ``conftest.py`` holds only the fixtures built on them.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from shards.build import BuildOptions
from shards.manifest import Manifest

DATA = Path(__file__).parent / "data"
W, H = 40, 30


def make_pixels(seed: int, channels: int = 3, width: int = W, height: int = H) -> np.ndarray:
    """Smooth, seed-dependent pixels (distinct seeds give distinct encodings)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    planes = []
    for _ in range(channels):
        fx, fy, phase = rng.uniform(0.05, 0.4, 2).tolist() + [rng.uniform(0, 6.28)]
        planes.append(127 + 120 * np.sin(fx * xx + fy * yy + phase))
    arr = np.stack(planes, axis=-1).astype(np.uint8)
    return arr[:, :, 0] if channels == 1 else arr


def encode(ext: str, pixels: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, pixels, params or [])
    if not ok:
        raise RuntimeError(f"cv2 could not encode {ext}")
    return bytes(buf.tobytes())


def jpeg(seed: int, channels: int = 3, width: int = W, height: int = H) -> bytes:
    return encode(".jpg", make_pixels(seed, channels, width, height))


def png(seed: int, channels: int = 3) -> bytes:
    return encode(".png", make_pixels(seed, channels))


def corrupt_jpeg(seed: int) -> bytes:
    """A JPEG whose headers (through SOS) are intact, then too little garbage scan data + EOI.

    It is structurally complete and OpenCV decodes it (grey where data is missing), with only
    libjpeg's "Corrupt JPEG data: premature end of data segment" warning on stderr.
    """
    good = jpeg(seed)
    sos = good.index(b"\xff\xda")
    length = int.from_bytes(good[sos + 2 : sos + 4], "big")
    garbage = bytes(np.random.default_rng(seed).integers(0, 255, 20, dtype=np.uint8))
    return good[: sos + 2 + length] + garbage.replace(b"\xff", b"\x00") + b"\xff\xd9"


def exif_rotated_jpeg(seed: int) -> bytes:
    """A JPEG with an EXIF APP1 segment saying orientation 6 (OpenCV turns it by 90 degrees)."""
    tiff = b"MM\0*\0\0\0\x08" + struct.pack(">HHHIHH", 1, 0x0112, 3, 1, 6, 0) + b"\0" * 4
    app1 = b"Exif\0\0" + tiff
    good = jpeg(seed)
    return good[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + good[2:]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Expected:
    """What the build must store for one valid source image."""

    label: int
    fmt: str
    channels: int
    width: int = W
    height: int = H


@dataclass
class Quirky:
    """The quirky folder and its defined outcomes; paths are POSIX, relative to ``root``.

    It holds a FIFO (``fifo.jpg``): never copy the folder or open each of its files.
    """

    root: Path
    against: Path
    classes: list[str]
    empty_classes: list[str]
    images: dict[str, Expected] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason prefix
    exact_groups: list[list[str]] = field(default_factory=list)
    conflicting_groups: list[list[str]] = field(default_factory=list)
    leaks: dict[str, list[str]] = field(default_factory=dict)  # our path -> paths in against

    def source_sha(self, rel: str) -> str:
        return sha256((self.root / rel).read_bytes())


def make_quirky(base: Path) -> Quirky:
    """Write the quirky folder under ``base`` (``base/train``, ``base/val``, ``base/outside``)."""
    root, against, outside = base / "train", base / "val", base / "outside"
    a, b, c, d = "n00000001", "n00000002", "n00000003", "n00000004"
    q = Quirky(root, against, classes=[a, b, c, d], empty_classes=[c, d])
    for folder in (root / a / "sub", root / a / ".hiddendir", root / b, root / c, root / d):
        folder.mkdir(parents=True)
    against.mkdir()
    outside.mkdir()
    seed = iter(range(1000, 2000))

    def image(rel: str, data: bytes, exp: Expected) -> None:
        (root / rel).write_bytes(data)
        q.images[rel] = exp

    def skip(rel: str, data: bytes | None, reason: str) -> None:
        if data is not None:
            (root / rel).write_bytes(data)
        q.skipped[rel] = reason

    for name in ("plain.jpg", "UPPER.JPEG", "lower.jpeg", "Mixed.Jpg", "with space.jpg",
                 "café ñ.jpg", "a.b.c.jpg", "sub/nested.JPG"):  # fmt: skip
        image(f"{a}/{name}", jpeg(next(seed)), Expected(0, "jpg", 3))
    image(f"{a}/new\nline.jpg", jpeg(next(seed)), Expected(0, "jpg", 3))
    try:  # a name that is not UTF-8 (latin-1 bytes), where the file system allows one
        latin1 = os.fsdecode(b"caf\xe9 latin1.jpg")
        image(f"{a}/{latin1}", jpeg(next(seed)), Expected(0, "jpg", 3))
    except OSError:
        pass
    image(f"{a}/rotated.jpg", exif_rotated_jpeg(next(seed)), Expected(0, "jpg", 3))
    image(f"{a}/image.png", png(next(seed)), Expected(0, "png", 3))
    image(f"{a}/GRAY.PNG", png(next(seed), channels=1), Expected(0, "png", 1))
    image(f"{a}/disguised.JPEG", png(next(seed)), Expected(0, "png", 3))
    image(f"{a}/gray.jpg", jpeg(next(seed), channels=1), Expected(0, "jpg", 1))
    image(f"{a}/cmyk.jpg", (DATA / "cmyk.jpg").read_bytes(), Expected(0, "jpg", 4))
    image(
        f"{a}/photo.webp",
        encode(".webp", make_pixels(next(seed)), [cv2.IMWRITE_WEBP_QUALITY, 80]),
        Expected(0, "webp", 3),
    )
    dup = jpeg(next(seed))
    image(f"{a}/dup_a.jpg", dup, Expected(0, "jpg", 3))
    image(f"{a}/dup_b.jpg", dup, Expected(0, "jpg", 3))
    q.exact_groups.append([f"{a}/dup_a.jpg", f"{a}/dup_b.jpg"])
    shared = jpeg(next(seed))
    image(f"{a}/shared.jpg", shared, Expected(0, "jpg", 3))
    image(f"{b}/shared copy.jpg", shared, Expected(1, "jpg", 3))
    q.exact_groups.append([f"{a}/shared.jpg", f"{b}/shared copy.jpg"])
    q.conflicting_groups.append([f"{a}/shared.jpg", f"{b}/shared copy.jpg"])
    trailing = jpeg(next(seed))
    image(f"{a}/trailing junk.jpg", trailing[:-2] + b"\0" * 50 + b"\xff\xd9", Expected(0, "jpg", 3))
    (outside / "target.jpg").write_bytes(jpeg(next(seed)))
    os.symlink(outside / "target.jpg", root / a / "link.jpg")
    q.images[f"{a}/link.jpg"] = Expected(0, "jpg", 3)

    full = jpeg(next(seed))
    skip(f"{a}/truncated.jpg", full[: len(full) // 2], "truncated")
    skip(f"{a}/corrupt.jpg", corrupt_jpeg(next(seed)), "corrupt")
    skip(f"{a}/badheader.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 60, "corrupt")
    skip(f"{a}/zero.jpg", b"", "empty file")
    skip(f"{a}/notes.txt", b"not an image\n", "not an image file name")
    skip(f"{a}/text.jpg", b"this is plain text, not a JPEG\n", "not an image:")
    skip(f"{a}/.hidden.jpg", jpeg(next(seed)), "hidden")
    (root / a / ".hiddendir" / "inside.jpg").write_bytes(jpeg(next(seed)))
    q.skipped[f"{a}/.hiddendir"] = "hidden"
    os.symlink(root / a / "missing.jpg", root / a / "broken.jpg")
    q.skipped[f"{a}/broken.jpg"] = "broken symlink"
    os.symlink("..", root / a / "loop")
    q.skipped[f"{a}/loop"] = "symlink loop"
    os.mkfifo(root / a / "fifo.jpg")
    q.skipped[f"{a}/fifo.jpg"] = "not a regular file"

    image(f"{b}/b1.jpg", jpeg(next(seed)), Expected(1, "jpg", 3))
    image(f"{b}/b2.png", png(next(seed)), Expected(1, "png", 3))
    leaked = jpeg(next(seed))
    image(f"{b}/leaked.jpg", leaked, Expected(1, "jpg", 3))
    (root / d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    q.skipped[f"{d}/.DS_Store"] = "hidden"
    (root / ".hidden_class").mkdir()
    (root / ".hidden_class" / "x.jpg").write_bytes(jpeg(next(seed)))
    q.skipped[".hidden_class"] = "hidden"
    (root / "LICENSE.txt").write_text("top-level file, not in a class folder\n")
    q.skipped["LICENSE.txt"] = "not in a class folder"

    (against / b).mkdir()
    (against / a).mkdir()
    (against / b / "val_leak.jpg").write_bytes(leaked)
    (against / a / "val_own.jpg").write_bytes(jpeg(next(seed)))
    q.leaks[f"{b}/leaked.jpg"] = [f"{b}/val_leak.jpg"]
    return q


def make_plain(root: Path, images: int, classes: int, seed: int = 0) -> list[str]:
    """A clean folder of tiny distinct JPEGs, round-robin over classes; returns the paths."""
    rels = []
    for k in range(classes):
        (root / f"n{k:08d}").mkdir(parents=True)
    for i in range(images):
        rel = f"n{i % classes:08d}/img_{i:05d}.jpg"
        (root / rel).write_bytes(jpeg(seed * 100_000 + i, width=16, height=12))
        rels.append(rel)
    return rels


def quick_options(**kw: object) -> BuildOptions:
    """``BuildOptions`` with the progress display off and the given fields set."""
    kw.setdefault("show_progress", False)
    return BuildOptions(**kw)  # type: ignore[arg-type]


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every shard, sidecar and the manifest in a build folder."""
    return {
        p.name: sha256(p.read_bytes())
        for p in sorted(folder.iterdir())
        if p.is_file() and (p.name.startswith("shard-") or p.name == "manifest.json")
    }


def _drop_dac_capabilities() -> None:
    """preexec_fn: as root, drop the capabilities that bypass file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_unprivileged(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``args`` so that file permissions apply even when the tests run as root.

    A root process whose capability bounding set lacks CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH gets neither after exec, so permission bits bind it like any user,
    while it can still run the venv's interpreter (which may live where an unprivileged user
    cannot reach it). Skips the test where the capabilities cannot be dropped.
    """
    preexec = _drop_dac_capabilities if os.geteuid() == 0 else None
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=60, preexec_fn=preexec, **kw
        )
    except subprocess.TimeoutExpired:
        raise
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot drop file-permission capabilities here: {exc}")


def make_flat(root: Path, names: list[str], seed: int = 0) -> list[str]:
    """A flat folder of tiny distinct JPEGs with the given file names; returns the names."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (root / name).write_bytes(jpeg(seed * 100_000 + 50_000 + i, width=16, height=12))
    return names


def imagenet_csv(rows: dict[str, str]) -> str:
    """``LOC_val_solution.csv`` text: ``ImageId`` -> class, each with one made-up box."""
    lines = ["ImageId,PredictionString"]
    lines += [f"{stem},{cls} 1 2 30 20 {cls} 3 4 10 11 " for stem, cls in rows.items()]
    return "\n".join(lines) + "\n"


def stored_samples(out: Path) -> dict[str, tuple[int, str]]:
    """Every stored sample's source path -> (label, class), read from the tars themselves;
    checks that ``KEY.cls`` agrees with the label in ``KEY.json``."""
    found: dict[str, tuple[int, str]] = {}
    for entry in Manifest.load(out).shards:
        with tarfile.open(out / entry.url, "r:") as tar:
            members = {m.name: m for m in tar}
            for name, member in members.items():
                if not name.endswith(".json"):
                    continue
                meta = json.loads(_read_member(tar, member))
                cls = int(_read_member(tar, members[name[: -len("json")] + "cls"]))
                assert cls == meta["label"], (name, cls, meta)
                found[meta["path"]] = (meta["label"], meta["class"])
    return found


def _read_member(tar: Any, member: Any) -> bytes:
    f = tar.extractfile(member)
    assert f is not None
    return bytes(f.read())
