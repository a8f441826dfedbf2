"""Builders of the bench modes over our own readers: ``map`` (``FolderDataset`` +
``folder_loader``, one file per sample; with ``--http`` one GET each), ``tar-naive`` and
``tar-per-worker`` (the baselines), ``tar-aware`` (``make_loader`` over ``ShardDataset``;
with a ``transform``, the modes of ``loader.bench.transform_modes``), and ``device-bytes``:
``tar-aware`` with ``decode="device"``, whose workers do what they do when a GPU decodes (read,
plan each crop from the header, batch the compressed bytes) and hand over ``ByteBatch``es that
nothing decodes. Its ratio is to the read limit (``--decode none``): how close the CPU side
comes to feeding a decoder that is never the bottleneck (docs/architecture.md, "Device decode").

Every one yields ``Batch`` objects built by ``BatchBuilder`` with the same decoder, so modes

The others yield ``Batch`` objects built by ``BatchBuilder`` with the same decoder, so modes
differ only in how samples are found, read and handed to the main process.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

from loader.bench.baselines import (
    FolderDataset,
    NaiveTarDataset,
    PerWorkerTarDataset,
    folder_loader,
)
from loader.bench.setup import BuiltMode, ModeSetup, ModeUnavailable, loader_options, storage_label
from loader.dataloader import PREFETCH_FACTOR, ClosingDataLoader, make_loader
from loader.transforms.sample import SampleTransform

__all__ = [
    "HttpFolderDataset",
    "device_bytes_mode",
    "map_mode",
    "tar_aware_mode",
    "tar_naive_mode",
    "tar_per_worker_mode",
]


class HttpFolderDataset(FolderDataset):
    """``FolderDataset`` whose files are fetched with one HTTP GET each from ``base_url``.

    The file list comes from scanning the local ``root``; only the bytes travel over HTTP.
    Each process opens its own keep-alive session on first use.
    """

    def __init__(self, root: str, base_url: str, **options: Any) -> None:
        super().__init__(root, **options)
        self.base_url = base_url.rstrip("/") + "/"
        self._session: Any = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"], state["_pid"] = None, -1
        return state

    def _read(self, indices: Sequence[int]) -> Iterator[tuple[bytes, int, int]]:
        import requests

        if self._session is None or self._pid != os.getpid():
            self._session, self._pid = requests.Session(), os.getpid()
        for i in indices:
            if self.latency_s:
                time.sleep(self.latency_s)
            url = self.base_url + quote(self.paths[i])
            response = self._session.get(url, timeout=60)
            response.raise_for_status()
            yield response.content, self.labels[i], i


def map_mode(setup: ModeSetup) -> BuiltMode:
    if setup.folder is None:
        raise ModeUnavailable("skipped", "map reads the source folder: give --folder")
    options: dict[str, Any] = {
        "image_size": setup.image_size,
        "decode": setup.decode,
        "seed": setup.seed,
        "latency_ms": setup.latency_ms,
    }
    if setup.folder_url is not None:
        dataset: FolderDataset = HttpFolderDataset(setup.folder, setup.folder_url, **options)
    else:
        dataset = FolderDataset(setup.folder, **options)
    loader = folder_loader(
        dataset,
        batch_size=setup.batch_size,
        num_workers=setup.workers,
        seed=setup.seed,
        prefetch_factor=PREFETCH_FACTOR,
    )
    return BuiltMode(loader, len(dataset), storage_label(setup, "file open (GET)"))


def _tar_options(setup: ModeSetup) -> dict[str, Any]:
    return {
        "batch_size": setup.batch_size,
        "image_size": setup.image_size,
        "decode": setup.decode,
        "seed": setup.seed,
        "latency_ms": setup.latency_ms,
    }


def tar_naive_mode(setup: ModeSetup) -> BuiltMode:
    dataset = NaiveTarDataset(setup.source, **_tar_options(setup))
    loader = ClosingDataLoader(dataset, batch_size=None, **loader_options(setup.workers))
    return BuiltMode(loader, setup.source.num_samples, storage_label(setup, "shard open/request"))


def tar_per_worker_mode(setup: ModeSetup) -> BuiltMode:
    dataset = PerWorkerTarDataset(setup.source, **_tar_options(setup))
    try:
        dataset.check_workers(setup.workers)
    except ValueError as exc:
        raise ModeUnavailable("not_applicable", str(exc)) from None
    loader = ClosingDataLoader(dataset, batch_size=None, **loader_options(setup.workers))
    return BuiltMode(loader, setup.source.num_samples, storage_label(setup, "shard open/request"))


def tar_aware_mode(setup: ModeSetup, transform: SampleTransform | None = None) -> BuiltMode:
    cache_dir = None
    if setup.cache_root is not None:
        cache_dir = tempfile.mkdtemp(prefix="run-", dir=setup.cache_root)
    loader = make_loader(
        setup.source,
        num_workers=setup.workers,
        cache_dir=cache_dir,
        transform=transform,
        **_tar_options(setup),
    )
    storage = storage_label(setup, "shard open/request")
    if cache_dir is not None:
        storage += ", node-local cache (empty at start)"
    return BuiltMode(loader, setup.source.num_samples, storage, cache_dir)


def device_bytes_mode(setup: ModeSetup) -> BuiltMode:
    if setup.decode:
        raise ModeUnavailable(
            "not_applicable",
            "device-bytes decodes nothing in the workers: compare it with the read limit "
            "(--decode none)",
        )
    options = _tar_options(setup) | {"decode": "device"}
    loader = make_loader(setup.source, num_workers=setup.workers, **options)
    return BuiltMode(loader, setup.source.num_samples, storage_label(setup, "shard open/request"))
