"""Where each synthetic image of ``shards.sample`` goes, and the val split's labels CSV.

Splits: ``train`` images are ``root/<wnid>/<wnid>_<n>.JPEG`` rendered from image indices
``0 .. images-1``; ``val`` images are rendered from indices starting at ``VAL_BASE``, so for
the same seed they are other images (no byte-identical file in both splits) of the same
classes (same wnids, same class styles), named ImageNet-val style
``ILSVRC2012_val_<8 digits>.JPEG`` with numbers ``1 .. images`` dealt in a seeded order across
classes. Layouts: ``folders`` (``root/<wnid>/<name>``) or ``imagenet-val`` (every image in
``root/val/``, the labels in ``root/LOC_val_solution.csv`` as ImageNet ships them: header
``ImageId,PredictionString``, the class then a whole-image box). Everything is a function of
``(images, classes, seed, size, split, layout)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np

from shards._synth import image_rng, image_shape

__all__ = [
    "LABELS_NAME",
    "LAYOUTS",
    "SPLITS",
    "VAL_BASE",
    "Item",
    "class_sizes",
    "image_folders",
    "image_root",
    "labels_csv",
    "plan_items",
]

SPLITS: Final = ("train", "val")
LAYOUTS: Final = ("folders", "imagenet-val")
VAL_BASE: Final = 1 << 40
LABELS_NAME: Final = "LOC_val_solution.csv"
FLAT_DIR: Final = "val"
_NUMBER_STREAM: Final = 3
_VAL_NAME_STREAM: Final = 4


class Item(NamedTuple):
    image_index: int  # seeds the image's generator
    label: int  # class index into the sorted wnids
    path: str  # final file path


def class_sizes(images: int, classes: int) -> list[int]:
    """Images per class: ``images // classes``, plus one for the first ``images % classes``."""
    base, extra = divmod(images, classes)
    return [base + (1 if c < extra else 0) for c in range(classes)]


def _file_numbers(seed: int, label: int, count: int) -> list[int]:
    """Distinct ImageNet-style file numbers for one class, ascending."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _NUMBER_STREAM, label]))
    span = max(50_000, 10 * count)
    return [int(v) + 1 for v in np.sort(rng.choice(span, size=count, replace=False))]


def plan_items(
    root: Path, wnids: Sequence[str], sizes: Sequence[int], seed: int, split: str, layout: str
) -> list[Item]:
    """Every image of the sample: its generator index, label and path."""
    if split == "train":
        items: list[Item] = []
        for label, (wnid, count) in enumerate(zip(wnids, sizes, strict=True)):
            for number in _file_numbers(seed, label, count):
                items.append(Item(len(items), label, str(root / wnid / f"{wnid}_{number}.JPEG")))
        return items
    labels = [label for label, count in enumerate(sizes) for _ in range(count)]
    rng = np.random.default_rng(np.random.SeedSequence([seed, _VAL_NAME_STREAM]))
    numbers = rng.permutation(len(labels)) + 1
    return [
        Item(VAL_BASE + i, label, str(_folder(root, wnids[label], layout) / _val_name(n)))
        for i, (label, n) in enumerate(zip(labels, numbers.tolist(), strict=True))
    ]


def image_folders(root: Path, wnids: Sequence[str], layout: str) -> list[Path]:
    """The folders the images go into."""
    return sorted({_folder(root, wnid, layout) for wnid in wnids})


def image_root(root: Path, layout: str) -> Path:
    """The folder to give ``shardfeed shard`` as SRC."""
    return _folder(root, None, layout)


def labels_csv(items: Sequence[Item], wnids: Sequence[str], seed: int, size: str) -> bytes:
    """ImageNet's ``LOC_val_solution.csv`` for ``items``: rows sorted by ``ImageId`` (the stem),
    the class then one whole-image box (``xmin ymin xmax ymax``) in ``PredictionString``."""
    rows = []
    for item in items:
        height, width = image_shape(image_rng(seed, item.image_index), size)
        stem = Path(item.path).stem
        rows.append(f"{stem},{wnids[item.label]} 0 0 {width - 1} {height - 1}")
    return ("ImageId,PredictionString\n" + "\n".join(sorted(rows)) + "\n").encode("ascii")


def _folder(root: Path, wnid: str | None, layout: str) -> Path:
    """Where an image of class ``wnid`` goes (``root`` itself for None in class folders)."""
    if layout == "imagenet-val":
        return root / FLAT_DIR
    return root if wnid is None else root / wnid


def _val_name(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}.JPEG"
