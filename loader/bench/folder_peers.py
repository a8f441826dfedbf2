"""What users run today over the source folder (architecture.md, "Benchmark"): ``pil-folder``
(the torchvision ``ImageFolder`` recipe) and ``spdl`` (SPDL's thread pipeline).

Both read ``root/<class>/<image>`` as listed by ``shards.scan.scan_folder``, so a sample's id is
its position in that sorted listing (as in the ``map`` mode) and our tracker counts
duplicates and missing samples; both produce uint8 ``[B, S, S, 3]`` RGB training crops
(``RandomResizedCrop(S)`` + horizontal flip) from the same images with the same number of
workers or threads.

``pil-folder``: a map-style dataset whose ``__getitem__`` opens the file with PIL and converts
it to RGB (torchvision's ``pil_loader``), then ``RandomResizedCrop(S)`` (bilinear, drawn as
torchvision's ``get_params`` draws it), ``RandomHorizontalFlip()`` and ``PILToTensor()``, all
done with PIL because torchvision cannot be installed here without replacing the CPU torch (its
PyPI build is linked against the CUDA one; ``--no-deps`` installs it but ``import torchvision``
fails). A plain ``DataLoader(shuffle=True, batch_size=B, num_workers=W)`` with its defaults
(default collation, two batches prefetched per worker, workers restarted each epoch) batches
it; the main process then only relabels the collated tensors as a ``Batch``. ``PILToTensor``
(uint8) stands in for ``ToTensor`` (float) so that the output is what every other mode delivers.

``spdl``: ``spdl.pipeline.PipelineBuilder`` with the files of a seeded permutation as source,
one ``pipe`` that reads and decodes a file (``concurrency=W``, on a pool of W threads),
``aggregate(B)`` and a collating ``pipe``, as SPDL's ImageNet example builds it. SPDL's own
image decoder (``spdl.io``) needs the system's FFmpeg libraries, which are not on these
machines, and has no random resized crop; the pipe decodes with the loader's ``ImageDecoder``
(OpenCV, which releases the GIL, so W threads decode in parallel). One pipeline per epoch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from loader.batch import Batch
from loader.bench.setup import BuiltMode, ModeSetup, ModeUnavailable
from loader.crop import random_resized_crop
from loader.decode import ImageDecoder
from shards.scan import scan_folder

__all__ = ["PilFolderDataset", "pil_folder_mode", "spdl_mode"]

_NO_PIXELS = (0, 0, 3)


def _folder_storage(setup: ModeSetup, how: str) -> str:
    """Both modes read the local folder, also with ``--http`` (and say so)."""
    storage = f"local files ({how})"
    if setup.http:
        storage += ", --http ignored: reads the local folder"
    if setup.latency_ms:
        storage += f", +{setup.latency_ms:g} ms per file open"
    return storage


def _listing(root: str) -> tuple[Path, list[str], list[int]]:
    scan = scan_folder(root)
    return Path(root), [c.rel for c in scan.candidates], [c.label for c in scan.candidates]


class PilFolderDataset(Dataset[tuple[torch.Tensor, int, int, int]]):
    """``ds[i]`` is ``(image, label, i, nbytes)``: the file decoded with PIL and transformed with
    torchvision's training recipe into a uint8 ``[3, S, S]`` tensor (``[0, 0, 3]`` with
    ``image_size`` 0: read, not decoded).

    Random draws come from one generator per process, seeded on first use from
    ``torch.initial_seed()``, which the DataLoader sets per worker and epoch (torchvision's
    transforms draw from that same torch seed).
    """

    def __init__(self, root: str, *, image_size: int, latency_ms: float = 0.0) -> None:
        self.root, self.paths, self.labels = _listing(root)
        self.image_size = image_size
        self.latency_s = latency_ms / 1000.0
        self._rng: tuple[int, np.random.Generator] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def _generator(self) -> np.random.Generator:
        seed = torch.initial_seed()
        if self._rng is None or self._rng[0] != seed:
            self._rng = seed, np.random.default_rng(seed)
        return self._rng[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        from PIL import Image

        if self.latency_s:
            time.sleep(self.latency_s)
        path = self.root / self.paths[index]
        s = self.image_size
        with open(path, "rb") as f:
            nbytes = os.fstat(f.fileno()).st_size
            if not s:
                f.read()
                return torch.empty(_NO_PIXELS, dtype=torch.uint8), self.labels[index], index, nbytes
            image = Image.open(f).convert("RGB")
        rng = self._generator()
        box = random_resized_crop(image.width, image.height, rng)
        area = (box.left, box.top, box.left + box.width, box.top + box.height)
        image = image.resize((s, s), Image.Resampling.BILINEAR, box=area)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        return pixels.permute(2, 0, 1).contiguous(), self.labels[index], index, nbytes


class _CollatedBatches(DataLoader[Any]):
    """A default-collating ``DataLoader`` whose batches are relabelled as ``Batch``es: the
    ``[B, 3, S, S]`` images as an ``[B, S, S, 3]`` view, nothing copied."""

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        for images, labels, ids, nbytes in super().__iter__():
            if images.dim() == 4 and images.shape[1] == 3:
                images = images.permute(0, 2, 3, 1)
            padded = torch.zeros(len(ids), dtype=torch.bool)
            yield Batch(images, labels, ids, padded, nbytes)


def pil_folder_mode(setup: ModeSetup) -> BuiltMode:
    """The ``ImageFolder`` + PIL + ``DataLoader`` recipe (see the module docstring)."""
    if setup.folder is None:
        raise ModeUnavailable("skipped", "pil-folder reads the source folder: give --folder")
    try:
        import PIL  # noqa: F401
    except ImportError as exc:
        raise ModeUnavailable("skipped", f"Pillow is not installed ({exc})") from None
    size = setup.image_size if setup.decode else 0
    dataset = PilFolderDataset(setup.folder, image_size=size, latency_ms=setup.latency_ms)
    loader = _CollatedBatches(
        dataset,
        batch_size=setup.batch_size,
        shuffle=True,
        num_workers=setup.workers,
        generator=torch.Generator().manual_seed(setup.seed),
    )
    return BuiltMode(loader, len(dataset), _folder_storage(setup, "PIL"))


class _SpdlDecode:
    """The pipeline's per-file stage: ``(index, path, label)`` to ``(pixels, label, id,
    nbytes)``. Each item draws from its own generator seeded by ``(seed, epoch, index)``, so
    the output does not depend on which thread ran it."""

    def __init__(self, image_size: int, seed: int, epoch: int, latency_s: float) -> None:
        self.decoder = ImageDecoder(image_size, train=True) if image_size else None
        self.seed, self.epoch, self.latency_s = seed, epoch, latency_s

    def __call__(self, item: tuple[int, Path, int]) -> tuple[np.ndarray, int, int, int]:
        index, path, label = item
        if self.latency_s:
            time.sleep(self.latency_s)
        data = path.read_bytes()
        if self.decoder is None:
            return np.empty(_NO_PIXELS, np.uint8), label, index, len(data)
        s = self.decoder.image_size
        pixels = np.empty((s, s, 3), np.uint8)
        self.decoder(data, pixels, np.random.default_rng([self.seed, self.epoch, index]))
        return pixels, label, index, len(data)


def _spdl_collate(items: list[tuple[np.ndarray, int, int, int]]) -> Batch:
    images = torch.from_numpy(np.stack([item[0] for item in items]))
    column = np.array([item[1:] for item in items], dtype=np.int64).reshape(len(items), 3)
    labels, ids, nbytes = (torch.from_numpy(column[:, k].copy()) for k in range(3))
    return Batch(images, labels, ids, torch.zeros(len(items), dtype=torch.bool), nbytes)


class _SpdlEpochs:
    """One SPDL pipeline per ``iter()``: started on the first item, stopped when the epoch ends
    or the iterator is dropped (``auto_stop``); its W threads end with it."""

    def __init__(self, setup: ModeSetup, folder: str) -> None:
        self.root, self.paths, self.labels = _listing(folder)
        self.setup = setup
        self.epoch = 0

    def __iter__(self) -> Iterator[Batch]:
        from spdl.pipeline import PipelineBuilder

        setup, epoch = self.setup, self.epoch
        self.epoch += 1
        order = np.random.default_rng([setup.seed, epoch]).permutation(len(self.paths))
        source = [(int(i), self.root / self.paths[i], self.labels[i]) for i in order]
        size = setup.image_size if setup.decode else 0
        threads = max(setup.workers, 1)
        decode = _SpdlDecode(size, setup.seed, epoch, setup.latency_ms / 1000.0)
        builder: Any = PipelineBuilder()
        pipeline = (
            builder.add_source(source)
            .pipe(decode, concurrency=threads)
            .aggregate(setup.batch_size)
            .pipe(_spdl_collate)
            .add_sink(3)
            .build(num_threads=threads)
        )
        with pipeline.auto_stop():
            yield from pipeline


def spdl_mode(setup: ModeSetup) -> BuiltMode:
    """SPDL's thread pipeline over the source folder (see the module docstring)."""
    if setup.folder is None:
        raise ModeUnavailable("skipped", "spdl reads the source folder: give --folder")
    try:
        import spdl.pipeline  # noqa: F401
    except ImportError as exc:
        raise ModeUnavailable(
            "skipped", f"spdl is not installed ({exc}); it comes with 'make bench'"
        ) from None
    epochs = _SpdlEpochs(setup, setup.folder)
    return BuiltMode(
        epochs, len(epochs.paths), _folder_storage(setup, f"{max(setup.workers, 1)} threads")
    )
