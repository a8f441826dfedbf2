"""The ``mosaic`` bench mode: MosaicML Streaming over an MDS copy of the shards (architecture.md,
"Benchmark").

The shards' samples (raw image bytes, label, global id) are converted once with Streaming's own
``MDSWriter`` into ``<shards>/.mds-<hash>`` (written to a temporary folder and renamed, so a
killed conversion is never used; the hash covers the manifest and this format, as LitData's copy
does) and read with ``StreamingDataset(local=..., batch_size=B)`` and ``StreamingDataLoader``
with Streaming's defaults otherwise (no shuffle, like the ``litdata`` mode); its batches'
items are decoded by the same collate function as the other peers' (``loader.bench.peers``).
Streaming reads a local folder: with ``--http`` it still reads the local copy, and ``storage``
says so; the simulated latency is paid once per MDS shard file opened.

Streaming's package imports its ``vision``, ``multimodal`` and ``text`` dataset modules, and
through them torchvision, whose PyPI build needs the CUDA torch. When torchvision is not
installed those three subpackages are stood in by empty modules before the import; the mode
uses only ``streaming.base`` (writer, dataset, loader).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

from loader.bench.peers import DecodeCollate
from loader.bench.setup import (
    BuiltMode,
    ModeSetup,
    ModeUnavailable,
    loader_options,
    publish_converted,
)
from loader.reader import ShardReader
from loader.sources import DatasetSource

__all__ = ["ensure_mds", "mds_cache_dir", "mosaic_mode"]

log = logging.getLogger("shardfeed.bench")

_MDS_FORMAT = "shardfeed-mds-v1"
_COLUMNS = {"image": "bytes", "label": "int", "id": "int"}
_UNUSED = ("streaming.vision", "streaming.multimodal", "streaming.text")


def _streaming() -> Any:
    """``streaming.base``, importing the package without torchvision when it is not installed."""
    if "streaming" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        for name in _UNUSED:
            sys.modules.setdefault(name, types.ModuleType(name))
    import streaming.base

    return streaming.base


def mds_cache_dir(shards_dir: str | os.PathLike[str]) -> Path:
    """``<shards>/.mds-<hash>``: the hash covers the manifest's bytes and this format."""
    manifest = Path(shards_dir) / "manifest.json"
    digest = hashlib.sha256(_MDS_FORMAT.encode() + manifest.read_bytes()).hexdigest()
    return Path(shards_dir) / f".mds-{digest[:16]}"


def ensure_mds(source: DatasetSource, shards_dir: str) -> Path:
    """The MDS copy of the shards, written now unless a complete one is cached; one MDS shard
    file per tar shard's worth of bytes."""
    target = mds_cache_dir(shards_dir)
    if (target / "index.json").is_file():
        return target
    mds = _streaming()
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    largest = max((s.filesize or 0 for s in source.shards), default=0)
    log.info("converting %d samples for MosaicML Streaming into %s", source.num_samples, target)
    with mds.MDSWriter(out=str(tmp), columns=_COLUMNS, size_limit=max(largest, 1 << 20)) as out:
        for entry in source.shards:
            with ShardReader(entry) as reader:
                for s in reader.read(0, entry.nsamples):
                    out.write({"image": bytes(s.data), "label": int(s.label), "id": int(s.gid)})
    return publish_converted(tmp, target)


def _dataset_class(mds: Any, latency_s: float) -> Any:
    if not latency_s:
        return mds.StreamingDataset

    class LatencyDataset(mds.StreamingDataset):
        """Streaming's dataset, sleeping ``latency_s`` whenever a new shard file is read."""

        _last_shard: int | None = None

        def get_item(self, sample_id: int, retry: int = 7) -> Any:
            shard, _ = self.spanner[sample_id]
            if shard != self._last_shard:
                time.sleep(latency_s)
                self._last_shard = shard
            return super().get_item(sample_id, retry)

    return LatencyDataset


def mosaic_mode(setup: ModeSetup) -> BuiltMode:
    """MosaicML Streaming's ``StreamingDataset`` over an MDS copy (see the module docstring)."""
    try:
        mds = _streaming()
    except ImportError as exc:
        raise ModeUnavailable(
            "skipped", f"mosaicml-streaming is not installed ({exc}); it comes with 'make bench'"
        ) from None
    if setup.shards_dir is None:
        raise ModeUnavailable("skipped", "mosaic converts a local shard folder; got a URL")
    folder = ensure_mds(setup.source, setup.shards_dir)
    importlib.import_module("streaming.base.util").clean_stale_shared_memory()
    dataset = _dataset_class(mds, setup.latency_ms / 1000.0)(
        local=str(folder), batch_size=setup.batch_size, shuffle=False
    )
    options = loader_options(setup.workers)
    options.pop("persistent_workers", None)
    loader = mds.StreamingDataLoader(
        dataset, batch_size=setup.batch_size, collate_fn=DecodeCollate(setup), **options
    )
    storage = "local copy (Streaming reads local folders here)" if setup.http else "local files"
    if setup.latency_ms:
        storage += f", +{setup.latency_ms:g} ms per MDS shard opened"
    return BuiltMode(loader, setup.source.num_samples, storage)
