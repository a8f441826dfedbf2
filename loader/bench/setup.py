"""What every bench mode is built from and returns: ``ModeSetup`` in, ``BuiltMode`` out, or
``ModeUnavailable`` when a mode cannot run here (docs/architecture.md, "Benchmark").

Every DataLoader a mode builds (except ``map``'s, which is ``folder_loader``'s own) has the
settings ``make_loader`` uses, from ``loader_options``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loader.batch import Batch
from loader.dataloader import PREFETCH_FACTOR, WorkerInit
from loader.sources import DatasetSource

__all__ = [
    "BuiltMode",
    "ModeSetup",
    "ModeUnavailable",
    "loader_options",
    "publish_converted",
    "storage_label",
]


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
    ``cache_root``: with ``--cache``, the folder under which each run of ``tar-aware`` gets a
    fresh node-local shard cache (``loader.remote.cache``), so its first epoch always fills it.
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
    cache_root: str | None = None


@dataclass
class BuiltMode:
    """A mode ready to iterate: ``loader`` (one epoch per ``iter()``), the number of distinct
    ids it can deliver, and ``storage``: what was read and how, as it will be reported.
    ``cache_dir``: the shard cache the run filled, deleted when the run ends."""

    loader: Iterable[Batch]
    num_ids: int
    storage: str
    cache_dir: str | None = None


def loader_options(workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments shared by the modes built here (``make_loader``'s)."""
    if workers == 0:
        return {"num_workers": 0}
    return {
        "num_workers": workers,
        "prefetch_factor": PREFETCH_FACTOR,
        "persistent_workers": True,
        "worker_init_fn": WorkerInit(),
    }


def storage_label(setup: ModeSetup, what: str) -> str:
    """Where a mode reads from and what each open costs, as the report shows it."""
    where = "HTTP on 127.0.0.1" if setup.http else "local files"
    latency = f", +{setup.latency_ms:g} ms per {what}" if setup.latency_ms else ""
    return f"{where}{latency}"


def publish_converted(tmp: Path, target: Path) -> Path:
    """Rename a peer's finished converted copy ``tmp`` (a LitData or MDS folder) to ``target``.

    Two runs may convert at once: the one that loses the rename drops its copy and uses the
    winner's, which is complete (it has its ``index.json``); anything else re-raises.
    """
    try:
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "index.json").is_file():
            raise
    return target
