"""The access patterns ``ShardDataset`` is measured against, each named for what it is.

All three share the real loader's decoder, ``BatchBuilder`` and pooled image buffers (one pool
per worker process and batch size, ``loader.worker.reuse``), so a comparison measures only the
access pattern:

- ``FolderDataset``: map-style, one file per sample, batches chosen by a DataLoader sampler.
- ``NaiveTarDataset``: iterable; every worker reads every shard, so each sample arrives once
  per worker (``(W - 1) * N`` duplicates with W workers).
- ``PerWorkerTarDataset``: iterable; worker ``i`` reads shard ``i``; only defined when the
  number of workers equals the number of shards, and says so otherwise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    get_worker_info,
)

from loader._checks import check_int, check_non_negative
from loader.batch import Batch, BatchBuilder
from loader.dataloader import ClosingDataLoader, WorkerInit
from loader.decode import Decoder, ImageDecoder, NoDecode
from loader.reader import ShardReader
from loader.sources import DatasetSource, resolve_source
from loader.worker.reuse import Reuse
from shards.scan import scan_folder

__all__ = ["FolderDataset", "NaiveTarDataset", "PerWorkerTarDataset", "folder_loader"]


def _check_common(*, image_size: int, seed: int, latency_ms: float) -> None:
    check_int("image_size", image_size, 0)
    check_int("seed", seed, 0)
    check_non_negative("latency_ms", latency_ms)


def _decoder(image_size: int, train: bool, decode: bool) -> Decoder:
    return ImageDecoder(image_size, train=train) if decode and image_size > 0 else NoDecode()


def _fill(
    samples: Iterable[tuple[bytes | memoryview, int, int]],
    builder: BatchBuilder,
    rng: np.random.Generator,
) -> Iterator[Batch]:
    for data, label, gid in samples:
        builder.add(data, label, gid, rng)
        if builder.full:
            yield builder.finish()
    if len(builder):
        yield builder.finish()


class FolderDataset(Dataset[Batch]):
    """Map-style over ``root/<class>/<image>``: ``ds[[i, j, ...]]`` reads and decodes those files.

    Sample ids are positions in the sorted scan (``shards.scan.scan_folder``), so they are
    the same on every rank and worker. Each open costs ``latency_ms`` extra (a slow file system).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        image_size: int = 224,
        train: bool = True,
        decode: bool = True,
        seed: int = 0,
        latency_ms: float = 0.0,
    ) -> None:
        _check_common(image_size=image_size, seed=seed, latency_ms=latency_ms)
        scan = scan_folder(root)
        self.root = Path(root)
        self.paths = [c.rel for c in scan.candidates]
        self.labels = [c.label for c in scan.candidates]
        self.classes = tuple(scan.classes)
        self.image_size = image_size if decode else 0
        self.train, self.decode, self.seed = train, decode, seed
        self.latency_s = latency_ms / 1000.0
        self._reuse = Reuse()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices: Sequence[int]) -> Batch:
        decoder = _decoder(self.image_size, self.train, self.decode)
        side = self.image_size
        pool = self._reuse.pool(len(indices) * side * side * 3)
        builder = BatchBuilder(len(indices), side, decoder, pool=pool)
        rng = np.random.default_rng([self.seed, *indices[:1]])
        batches = list(_fill(self._read(indices), builder, rng))
        return batches[0]

    def _read(self, indices: Sequence[int]) -> Iterator[tuple[bytes, int, int]]:
        for i in indices:
            if self.latency_s:
                time.sleep(self.latency_s)
            yield (self.root / self.paths[i]).read_bytes(), self.labels[i], i


def folder_loader(
    dataset: FolderDataset,
    *,
    batch_size: int,
    num_workers: int,
    shuffle: bool = True,
    seed: int = 0,
    prefetch_factor: int = 4,
    persistent_workers: bool = True,
) -> ClosingDataLoader:
    """The usual map-style DataLoader: a (random) sampler cut into batches by ``BatchSampler``.

    Worker settings are ``make_loader``'s (persistent workers, ``prefetch_factor``, one OpenCV
    thread per worker through ``WorkerInit()``), so a comparison measures the access pattern.
    """
    check_int("batch_size", batch_size, 1)
    check_int("num_workers", num_workers, 0)
    check_int("seed", seed, 0)
    check_int("prefetch_factor", prefetch_factor, 1)
    generator = torch.Generator().manual_seed(seed)
    base = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=False)
    extra: dict[str, Any] = {}
    if num_workers:
        extra = {
            "prefetch_factor": prefetch_factor,
            "persistent_workers": persistent_workers,
            "worker_init_fn": WorkerInit(),
        }
    return ClosingDataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=num_workers, **extra
    )


class _TarBaseline(IterableDataset[Batch]):
    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str] | DatasetSource,
        *,
        batch_size: int = 256,
        image_size: int = 224,
        train: bool = True,
        decode: bool = True,
        seed: int = 0,
        latency_ms: float = 0.0,
    ) -> None:
        check_int("batch_size", batch_size, 1)
        _check_common(image_size=image_size, seed=seed, latency_ms=latency_ms)
        self.source = source if isinstance(source, DatasetSource) else resolve_source(source)
        self.batch_size = batch_size
        self.image_size = image_size if decode else 0
        self.train, self.decode, self.seed = train, decode, seed
        self.latency_s = latency_ms / 1000.0
        self._reuse = Reuse()

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def _read_shards(self, shards: Iterable[int]) -> Iterator[tuple[memoryview | bytes, int, int]]:
        for index in shards:
            reader = ShardReader(self.source.shards[index], latency_s=self.latency_s)
            try:
                entry = self.source.shards[index]
                for s in reader.read(0, entry.nsamples):
                    yield s.data, s.label, s.gid
            finally:
                reader.close()

    def _batches(self, shards: Iterable[int]) -> Iterator[Batch]:
        worker, _ = self._worker()
        decoder = _decoder(self.image_size, self.train, self.decode)
        side = self.image_size
        pool = self._reuse.pool(self.batch_size * side * side * 3)
        builder = BatchBuilder(self.batch_size, side, decoder, pool=pool)
        rng = np.random.default_rng([self.seed, worker])
        return _fill(self._read_shards(shards), builder, rng)


class NaiveTarDataset(_TarBaseline):
    """Every worker reads every shard: the common mistake, kept to show its duplicates."""

    def __iter__(self) -> Iterator[Batch]:
        return self._batches(range(len(self.source.shards)))


class PerWorkerTarDataset(_TarBaseline):
    """Worker ``i`` reads shard ``i``: exactly once only when workers and shards are equal."""

    def check_workers(self, num_workers: int) -> None:
        """Raise ``ValueError`` naming both numbers unless they match."""
        shards = len(self.source.shards)
        if max(num_workers, 1) != shards:
            raise ValueError(
                f"PerWorkerTarDataset reads one shard per worker: expected num_workers == "
                f"number of shards, got num_workers={num_workers} and {shards} shards"
            )

    def __iter__(self) -> Iterator[Batch]:
        worker, num_workers = self._worker()
        self.check_workers(num_workers if get_worker_info() is not None else 0)
        return self._batches([worker])
