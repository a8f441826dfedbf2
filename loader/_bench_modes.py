"""The benchmark's modes as loaders: every one yields ``Batch`` objects built by ``BatchBuilder``
with the same decoder (``ImageDecoder(S, train=True)``, or ``NoDecode`` for ``--decode none``),
so modes differ only in how samples are found, read and handed to the main process.

- ``map``: ``FolderDataset`` + ``folder_loader`` (one file per sample, sampler in the main
  process); with ``--http`` the same files fetched one GET each.
- ``tar-naive`` / ``tar-per-worker``: ``NaiveTarDataset`` / ``PerWorkerTarDataset``.
- ``tar-aware``: ``make_loader`` over ``ShardDataset``.
- ``webdataset`` / ``litdata``: see ``loader._bench_peers``.

Every DataLoader built here (not ``map``'s, which is ``folder_loader``'s own) has the settings
``make_loader`` uses: ``prefetch_factor=4``, persistent workers, ``WorkerInit``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from loader.baselines import FolderDataset, NaiveTarDataset, PerWorkerTarDataset, folder_loader
from loader.batch import Batch
from loader.dataloader import ClosingDataLoader, WorkerInit, make_loader
from loader.sources import DatasetSource

__all__ = [
    "BuiltMode",
    "ModeSetup",
    "ModeUnavailable",
    "build_mode",
    "close_loader",
    "loader_options",
]

PREFETCH = 4


class ModeUnavailable(Exception):
    """A mode that cannot run here; ``status`` is ``"skipped"`` or ``"not_applicable"``."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ModeSetup:
    """What every mode of one run reads, and how.

    ``shards`` is the location the tar modes resolve (a local manifest, or its URL with
    ``--http``); ``source`` is it resolved. ``folder`` is the local image folder (its listing is
    always read locally), ``folder_url`` its base URL with ``--http``. ``shards_dir`` is the
    local shard folder (where LitData's converted copy is cached), or ``None``.
    """

    shards: str
    source: DatasetSource
    folder: str | None
    folder_url: str | None
    shards_dir: str | None
    workers: int
    batch_size: int
    image_size: int
    decode: bool
    seed: int
    latency_ms: float
    http: bool


@dataclass
class BuiltMode:
    """A mode ready to iterate: ``loader`` (one epoch per ``iter()``), the number of distinct
    ids it can deliver, and ``storage``: what was read and how, as it will be reported."""

    loader: Iterable[Batch]
    num_ids: int
    storage: str


def loader_options(workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments shared by the modes built here (``make_loader``'s)."""
    if workers == 0:
        return {"num_workers": 0}
    return {
        "num_workers": workers,
        "prefetch_factor": PREFETCH,
        "persistent_workers": True,
        "worker_init_fn": WorkerInit(),
    }


def _storage(setup: ModeSetup, what: str) -> str:
    where = "HTTP on 127.0.0.1" if setup.http else "local files"
    latency = f", +{setup.latency_ms:g} ms per {what}" if setup.latency_ms else ""
    return f"{where}{latency}"


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


def _map(setup: ModeSetup) -> BuiltMode:
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
        prefetch_factor=PREFETCH,
    )
    return BuiltMode(loader, len(dataset), _storage(setup, "file open (GET)"))


def _tar_options(setup: ModeSetup) -> dict[str, Any]:
    return {
        "batch_size": setup.batch_size,
        "image_size": setup.image_size,
        "decode": setup.decode,
        "seed": setup.seed,
        "latency_ms": setup.latency_ms,
    }


def _tar_naive(setup: ModeSetup) -> BuiltMode:
    dataset = NaiveTarDataset(setup.source, **_tar_options(setup))
    loader = ClosingDataLoader(dataset, batch_size=None, **loader_options(setup.workers))
    return BuiltMode(loader, setup.source.num_samples, _storage(setup, "shard open/request"))


def _tar_per_worker(setup: ModeSetup) -> BuiltMode:
    dataset = PerWorkerTarDataset(setup.source, **_tar_options(setup))
    try:
        dataset.check_workers(setup.workers)
    except ValueError as exc:
        raise ModeUnavailable("not_applicable", str(exc)) from None
    loader = ClosingDataLoader(dataset, batch_size=None, **loader_options(setup.workers))
    return BuiltMode(loader, setup.source.num_samples, _storage(setup, "shard open/request"))


def _tar_aware(setup: ModeSetup) -> BuiltMode:
    loader = make_loader(setup.source, num_workers=setup.workers, **_tar_options(setup))
    return BuiltMode(loader, setup.source.num_samples, _storage(setup, "shard open/request"))


def build_mode(name: str, setup: ModeSetup) -> BuiltMode:
    """Build mode ``name``'s loader; raises ``ModeUnavailable`` when it cannot run here."""
    from loader import _bench_peers

    builders = {
        "map": _map,
        "tar-naive": _tar_naive,
        "tar-per-worker": _tar_per_worker,
        "tar-aware": _tar_aware,
        "webdataset": _bench_peers.webdataset_mode,
        "litdata": _bench_peers.litdata_mode,
    }
    if name not in builders:
        raise ValueError(f"expected a mode in {sorted(builders)}, got mode={name!r}")
    built: BuiltMode = builders[name](setup)
    return built


def close_loader(loader: Iterable[Batch]) -> None:
    """Stop the worker processes a (persistent) DataLoader keeps between epochs."""
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if iterator is not None:
        loader._iterator = None  # type: ignore[attr-defined]
