"""A synthetic ImageNet-like folder: ``root/<wnid>/<wnid>_<n>.JPEG``, for tests and benchmarks.

``split="val"`` makes other images of the same classes (same seed: same wnids, disjoint
images), and ``layout="imagenet-val"`` lays them out as ImageNet ships its val set: a flat
folder plus ``LOC_val_solution.csv`` (``shards._samplelayout``).

Images are photo-like textures (see ``shards._synth``) whose palette and grating geometry depend
on the class, so a small CNN can learn them, and whose dimensions, JPEG quality and file sizes
follow ImageNet's (``size="imagenet"``) or are shrunk for scaling and unit tests (``"small"``,
``"tiny"``). The folder is a pure function of ``(images, classes, seed, size)``: every image is
rendered from its own generator seeded by ``(seed, image index)``, so the bytes do not depend on
``workers`` or on the order in which images are written.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

import cv2
import numpy as np

from shards._atomic import write_bytes_atomic
from shards._samplelayout import (
    LABELS_NAME,
    LAYOUTS,
    SPLITS,
    Item,
    class_sizes,
    image_folders,
    image_root,
    labels_csv,
    plan_items,
)
from shards._synth import SIZES, Canvas, ClassStyle, class_style, render_jpeg

__all__ = ["SampleSummary", "add_sample_arguments", "make_sample", "split_for", "wordnet_ids"]

logger = logging.getLogger(__name__)

WNID_LOW: Final = 1_000_000
WNID_HIGH: Final = 15_000_000
_WNID_STREAM: Final = 2
MAX_CHUNK: Final = 32


@dataclass(frozen=True)
class SampleSummary:
    """What ``make_sample`` wrote: the folder, counts, total image bytes, wnids in label order,
    the split and layout, the folder to shard (``image_root``) and the labels file (``labels``,
    None without one)."""

    root: str
    images: int
    classes: int
    bytes: int
    class_names: list[str]
    split: str = "train"
    layout: str = "folders"
    image_root: str = ""
    labels: str | None = None


class _Chunk(NamedTuple):
    seed: int
    size: str
    items: tuple[Item, ...]


def wordnet_ids(count: int, seed: int) -> list[str]:
    """``count`` distinct WordNet-style ids (``'n'`` + 8 digits), sorted, a function of the seed."""
    if count < 0:
        raise ValueError(f"expected count >= 0, got count={count}")
    if count > WNID_HIGH - WNID_LOW:
        raise ValueError(f"expected count <= {WNID_HIGH - WNID_LOW}, got count={count}")
    _check_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _WNID_STREAM]))
    picked = rng.choice(WNID_HIGH - WNID_LOW, size=count, replace=False)
    return [f"n{int(v) + WNID_LOW:08d}" for v in np.sort(picked)]


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise ValueError(f"expected seed >= 0, got seed={seed}")


def _chunks(items: Sequence[Item], seed: int, size: str, workers: int) -> list[_Chunk]:
    """Consecutive runs of items: about eight per worker, at most ``MAX_CHUNK`` images each."""
    per = max(1, min(MAX_CHUNK, math.ceil(len(items) / (workers * 8))))
    return [
        _Chunk(seed, size, tuple(items[start : start + per])) for start in range(0, len(items), per)
    ]


def _write_chunk(chunk: _Chunk) -> tuple[int, int]:
    """Render and write every image of ``chunk``; returns (images written, bytes written).

    Each file is written to a hidden temporary name in its final folder and renamed, so a
    reader never sees a partial JPEG. Safe to run in several processes at once: no two chunks
    share a file.
    """
    styles: dict[int, ClassStyle] = {}
    canvas = Canvas()
    total = 0
    for item in chunk.items:
        style = styles.get(item.label)
        if style is None:
            style = styles[item.label] = class_style(chunk.seed, item.label)
        data = render_jpeg(chunk.seed, item.image_index, style, chunk.size, canvas)
        final = Path(item.path)
        temp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        temp.write_bytes(data)
        os.replace(temp, final)
        total += len(data)
    return len(chunk.items), total


def _init_worker() -> None:
    """Pool initialiser: parallelism comes from processes, so OpenCV runs single-threaded."""
    cv2.setNumThreads(1)


def _check_out(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise ValueError(f"expected a folder to create, got out={str(root)!r}, which is a file")
    if root.is_dir() and any(root.iterdir()):
        raise ValueError(
            f"expected a missing or empty folder, got out={str(root)!r}, which is not empty; "
            "pick an empty folder"
        )


def make_sample(
    out: str | Path,
    *,
    images: int,
    classes: int,
    seed: int = 0,
    size: str = "imagenet",
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    split: str = "train",
    layout: str = "folders",
) -> SampleSummary:
    """Write ``images`` JPEGs over ``classes`` wnid folders under ``out`` and summarise them.

    Class ``i`` (the ``i``-th wnid in sorted order) gets ``images // classes`` images, one more
    for ``i < images % classes``. ``split="val"`` draws other images of the same classes;
    ``layout="imagenet-val"`` (val only) puts them in ``out/val/`` beside
    ``out/LOC_val_solution.csv`` (``shards._samplelayout``). The same ``(images, classes, seed,
    size, split, layout)`` give byte-identical files on one machine, whatever ``workers`` is.
    ``workers > 1`` renders in a pool of spawned processes (so a calling script needs the usual
    ``if __name__ == "__main__":`` guard), each writing whole files; ``progress(n)`` is called
    in the calling thread only, with the number of images newly written, and the calls add up
    to ``images``. ``out`` must be missing or empty; a failure part-way leaves the files
    written so far.
    """
    if images < 1:
        raise ValueError(f"expected images >= 1, got images={images}")
    if classes < 1:
        raise ValueError(f"expected classes >= 1, got classes={classes}")
    if classes > images:
        raise ValueError(
            f"expected classes <= images (every class needs an image), got classes={classes} "
            f"images={images}"
        )
    if size not in SIZES:
        raise ValueError(f"expected size in {SIZES}, got size={size!r}")
    if workers < 1:
        raise ValueError(f"expected workers >= 1, got workers={workers}")
    if split not in SPLITS:
        raise ValueError(f"expected split in {SPLITS}, got split={split!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"expected layout in {LAYOUTS}, got layout={layout!r}")
    if layout == "imagenet-val" and split != "val":
        raise ValueError(
            f"expected split='val' with layout='imagenet-val' (ImageNet ships its val set flat), "
            f"got split={split!r}"
        )
    _check_seed(seed)
    root = Path(out)
    _check_out(root)

    wnids = wordnet_ids(classes, seed)
    items = plan_items(root, wnids, class_sizes(images, classes), seed, split, layout)
    for folder in image_folders(root, wnids, layout):
        folder.mkdir(parents=True, exist_ok=True)
    labels = None
    if layout == "imagenet-val":
        labels = root / LABELS_NAME
        write_bytes_atomic(labels, labels_csv(items, wnids, seed, size))
    logger.info(
        "writing %d %s %s images over %d classes to %s with %d worker(s)",
        images,
        size,
        split,
        classes,
        root,
        workers,
    )
    chunks = _chunks(items, seed, size, workers)
    processes = min(workers, len(chunks))
    total = 0
    if processes == 1:
        for chunk in chunks:
            count, nbytes = _write_chunk(chunk)
            total += nbytes
            if progress is not None:
                progress(count)
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes, initializer=_init_worker) as pool:
            for count, nbytes in pool.imap_unordered(_write_chunk, chunks):
                total += nbytes
                if progress is not None:
                    progress(count)
    logger.info("wrote %d images, %.1f MB, to %s", images, total / 1e6, root)
    return SampleSummary(
        root=str(root.resolve()),
        images=images,
        classes=classes,
        bytes=total,
        class_names=list(wnids),
        split=split,
        layout=layout,
        image_root=str(image_root(root, layout).resolve()),
        labels=None if labels is None else str(labels.resolve()),
    )


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``OUT``, ``--images``, ``--classes``, ``--seed``, ``--size``, ``--workers``,
    ``--split`` and ``--layout``.

    Destinations match ``make_sample``'s parameters; values are checked by ``make_sample``.
    ``--split`` is left None when not given: ``split_for`` resolves it from ``--layout``.
    """
    parser.add_argument("out", metavar="OUT", help="folder to create; must be missing or empty")
    parser.add_argument("--images", type=int, default=1000, help="number of images (default 1000)")
    parser.add_argument(
        "--classes", type=int, default=10, help="number of class folders (default 10)"
    )
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="imagenet",
        help="image dimensions: imagenet (~500x375, ~100 KB), small (64-96 px), tiny (32-48 px)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes rendering images; output is the same for any value (default 1)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        help="train, or val: other images of the same classes for the same seed "
        "(default train; val with --layout imagenet-val)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="folders",
        help="folders: OUT/<wnid>/<image>; imagenet-val: OUT/val/<image> plus "
        f"OUT/{LABELS_NAME}, as ImageNet ships its val set (default folders)",
    )


def split_for(split: str | None, layout: str) -> str:
    """The split ``--split`` names, or the one ``--layout`` implies when it was left out."""
    if split is not None:
        return split
    return "val" if layout == "imagenet-val" else "train"
