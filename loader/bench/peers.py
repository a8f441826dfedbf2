"""The peers the loader is measured against: webdataset's pipeline and LitData's streaming
dataset, over the same images, decoded by the same function into the same kind of batch.

Each peer batches its own way and hands its batch's items to a collate function that decodes
them with the loader's decoder straight into one ``[B, S, S, 3]`` array (a ``BatchBuilder`` in
ordinary memory), so decoding costs exactly what it costs in every other mode: the same
function writing into a preallocated batch slot. What differs is what the peers do around it,
including how a finished batch reaches the main process: as any DataLoader batch does (copied
into a new shared-memory segment), not through the loader's recycled shared buffers.

webdataset: the stages ``wds.WebDataset(urls, shardshuffle=False)`` runs (``SimpleShardList``,
``split_by_worker``, ``gopen`` per shard, ``tar_file_expander``, ``group_by_keys``) composed as a
``wds.DataPipeline``, so that each shard open can first sleep the simulated latency, then
``wds.batched(B, collation_fn=...)``. Over HTTP ``gopen`` streams each shard through ``curl``, as
webdataset does.

LitData: the shards' samples (raw image bytes, label, global id) are converted once with
``litdata.optimize`` into ``<shards>/.litdata-<hash>``, one chunk per shard's worth of samples,
and read with ``StreamingDataset`` + ``StreamingDataLoader(batch_size=B, collate_fn=...)``
(LitData's defaults otherwise). LitData reads a local folder: with ``--http`` it still reads the
local copy, and ``storage`` says so; the simulated latency is paid once per chunk file opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import get_worker_info

from loader.batch import Batch, BatchBuilder
from loader.bench.setup import (
    BuiltMode,
    ModeSetup,
    ModeUnavailable,
    loader_options,
    publish_converted,
)
from loader.decode import Decoder, ImageDecoder, NoDecode
from loader.reader import ShardReader
from loader.sources import DatasetSource
from shards.format import MANIFEST_NAME

__all__ = [
    "DecodeCollate",
    "ensure_litdata",
    "litdata_cache_dir",
    "litdata_mode",
    "webdataset_mode",
]

log = logging.getLogger("shardfeed.bench")

_IMAGE_KEYS = ("jpg", "png", "webp")
_LITDATA_FORMAT = "shardfeed-litdata-v1"


class DecodeCollate:
    """A peer's ``collation_fn``/``collate_fn``: decodes one list of items into one ``Batch``.

    Items are ``(image bytes, label, id)`` tuples or LitData's ``{"image", "label", "id"}``.
    The builder and the generator (seeded by ``(seed, worker)``) are made on first use, in the
    worker; the builder allocates ordinary memory, as a user's collate function would.
    """

    def __init__(self, setup: ModeSetup) -> None:
        self.batch_size = setup.batch_size
        self.image_size = setup.image_size if setup.decode else 0
        self.seed = setup.seed
        self._state: tuple[BatchBuilder, np.random.Generator] | None = None

    def __call__(self, items: list[Any]) -> Batch:
        if self._state is None:
            info = get_worker_info()
            worker = info.id if info is not None else 0
            decoder: Decoder = (
                ImageDecoder(self.image_size, train=True) if self.image_size else NoDecode()
            )
            builder = BatchBuilder(self.batch_size, self.image_size, decoder, shared_memory=False)
            self._state = builder, np.random.default_rng([self.seed, worker])
        builder, rng = self._state
        for item in items:
            if isinstance(item, dict):
                item = (item["image"], item["label"], item["id"])
            data, label, gid = item
            builder.add(data, int(label), int(gid), rng)
        return builder.finish()


class _WdsOpen:
    """The pipeline stage ``url_opener`` is, with the simulated latency before each open."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s

    def __call__(self, shards: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from webdataset.gopen import gopen

        for shard in shards:
            if self.latency_s:
                time.sleep(self.latency_s)
            shard.update(stream=gopen(shard["url"]))
            yield shard


def _wds_items(samples: Iterable[dict[str, Any]]) -> Iterator[tuple[bytes, int, int]]:
    for sample in samples:
        image = next((sample[k] for k in _IMAGE_KEYS if k in sample), b"")
        yield image, int(sample["cls"]), int(sample["__key__"])


def webdataset_mode(setup: ModeSetup) -> BuiltMode:
    """webdataset's own tar pipeline over the shards (see the module docstring)."""
    try:
        import webdataset as wds
        from webdataset import tariterators
    except ImportError as exc:
        raise ModeUnavailable("skipped", f"webdataset is not importable: {exc}") from None
    from loader.dataloader import ClosingDataLoader

    pipeline = wds.DataPipeline(
        wds.SimpleShardList([s.url for s in setup.source.shards]),
        wds.split_by_worker,
        _WdsOpen(setup.latency_ms / 1000.0),
        tariterators.tar_file_expander,
        tariterators.group_by_keys,
        _wds_items,
        wds.batched(setup.batch_size, collation_fn=DecodeCollate(setup), partial=True),
    )
    loader = ClosingDataLoader(pipeline, batch_size=None, **loader_options(setup.workers))
    where = "HTTP on 127.0.0.1 via curl" if setup.http else "local files"
    latency = f", +{setup.latency_ms:g} ms per shard open" if setup.latency_ms else ""
    return BuiltMode(loader, setup.source.num_samples, where + latency)


def litdata_cache_dir(shards_dir: str | os.PathLike[str]) -> Path:
    """``<shards>/.litdata-<hash>``: the hash covers the manifest's bytes and this format."""
    manifest = Path(shards_dir) / MANIFEST_NAME
    digest = hashlib.sha256(_LITDATA_FORMAT.encode() + manifest.read_bytes()).hexdigest()
    return Path(shards_dir) / f".litdata-{digest[:16]}"


class _LitItems:
    """``optimize``'s ``fn``: every sample of one shard as ``{"image", "label", "id"}``."""

    def __init__(self, source: DatasetSource) -> None:
        self.source = source

    def __call__(self, shard: int) -> Iterator[dict[str, Any]]:
        entry = self.source.shards[shard]
        with ShardReader(entry) as reader:
            for s in reader.read(0, entry.nsamples):
                yield {"image": bytes(s.data), "label": int(s.label), "id": int(s.gid)}


def ensure_litdata(source: DatasetSource, shards_dir: str, workers: int) -> Path:
    """The LitData copy of the shards, converted now unless a complete one is cached.

    Written to a temporary folder and renamed, so a killed conversion is never used.
    """
    from litdata import optimize

    target = litdata_cache_dir(shards_dir)
    if (target / "index.json").is_file():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    per_chunk = max(1, math.ceil(source.num_samples / max(len(source.shards), 1)))
    log.info("converting %d samples for LitData into %s", source.num_samples, target)
    with contextlib.redirect_stdout(sys.stderr):
        optimize(
            fn=_LitItems(source),
            inputs=list(range(len(source.shards))),
            output_dir=str(tmp),
            chunk_size=per_chunk,
            num_workers=max(1, min(workers, len(source.shards))),
            start_method="fork",
            verbose=False,
        )
    return publish_converted(tmp, target)


def _latency_item_loader(latency_s: float) -> Any:
    from litdata.streaming import item_loader

    class PyTreeLoader(item_loader.PyTreeLoader):  # LitData checks the class name
        """LitData's default item loader, sleeping ``latency_s`` whenever a new chunk is read."""

        _last_chunk: int | None = None

        def load_item_from_chunk(self, index: int, chunk_index: int, *args: Any, **kw: Any) -> Any:
            if chunk_index != self._last_chunk:
                time.sleep(latency_s)
                self._last_chunk = chunk_index
            return super().load_item_from_chunk(index, chunk_index, *args, **kw)

    return PyTreeLoader()


def litdata_mode(setup: ModeSetup) -> BuiltMode:
    """LitData's ``StreamingDataset`` over a converted copy of the same samples."""
    try:
        from litdata import StreamingDataLoader, StreamingDataset
    except ImportError as exc:
        raise ModeUnavailable(
            "skipped", f"litdata is not installed ({exc}); it comes with 'make bench'"
        ) from None
    if setup.shards_dir is None:
        raise ModeUnavailable("skipped", "litdata converts a local shard folder; got a URL")
    folder = ensure_litdata(setup.source, setup.shards_dir, setup.workers)
    item_loader = _latency_item_loader(setup.latency_ms / 1000.0) if setup.latency_ms else None
    dataset = StreamingDataset(str(folder), item_loader=item_loader, shuffle=False)
    options = loader_options(setup.workers)
    options.pop("persistent_workers", None)
    loader = StreamingDataLoader(
        dataset, batch_size=setup.batch_size, collate_fn=DecodeCollate(setup), **options
    )
    storage = (
        "local copy (LitData reads local folders, not plain HTTP)"
        if setup.http
        else ("local files")
    )
    if setup.latency_ms:
        storage += f", +{setup.latency_ms:g} ms per chunk opened"
    return BuiltMode(loader, setup.source.num_samples, storage)
