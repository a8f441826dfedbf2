"""``MixedDataset``: a ``ShardDataset`` over several sources (docs/architecture.md, "Mixing").

The mixed epoch (``MixPlan``) is a sequence of ``epoch_size`` positions; to the rest of the
loader it is one dataset of that many samples, held by one virtual shard: the partition cuts its
positions across ranks and workers, resume marks positions taken (``loader.resume``), and the
DataLoader wrapper records batches by their ``position`` column. Only the worker's stream
(``MixedStream``) knows the sources. The virtual shard's hash covers every source's fingerprint,
its quota, the exhaustion rule and the epoch size, so a state saved for another mix is refused;
``state_dict`` adds each source's pass position, which ``load_state_dict`` checks by name.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from loader.badsamples import BadSamplePolicy
from loader.dataset import ShardDataset
from loader.decode import DecodeError
from loader.mix.plan import MixPlan
from loader.mix.quotas import epoch_quotas
from loader.mix.source import MixError, Source
from loader.mix.stream import MixedStream
from loader.remote.retry import RetryPolicy
from loader.resume.state import ResumeError, fingerprint
from loader.sources import DatasetSource, ShardSource, resolve_source
from loader.worker.reuse import KEEP_OPEN, Reuse

if TYPE_CHECKING:
    from loader.batch import Batch
    from loader.device.bytebatch import ByteBatch

__all__ = ["MixedDataset"]

log = logging.getLogger("shardfeed.loader")
MIX_SCHEME = "mix:"
_NO_CLASS_COUNT = 1 << 62  # shards that name no classes: any label >= 0 is taken


class MixedDataset(ShardDataset):
    """Streams ``MixedBatch``es of ``sources`` (a list of ``Source``): each epoch takes every
    source's quota (``loader.mix.quotas``) of ``epoch_size`` positions, ``exhaustion`` is
    ``"cycle"`` or ``"stop"`` (``loader.mix.passes``). Every other option is
    ``ShardDataset``'s; ``bad_samples`` is the default of sources that set none."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        epoch_size: int | None = None,
        exhaustion: str = "cycle",
        seed: int = 0,
        bad_samples: str = "skip",
        skip_budget: int = 100,
        retry: RetryPolicy | None = None,
        decode: Any = True,
        **options: Any,
    ) -> None:
        if options.get("transform") is not None:
            raise ValueError(
                "expected no per-sample transform with a mix of sources, got "
                f"transform={options['transform']!r}: a mix does not run transforms yet; apply "
                "it on the device with DevicePrefetcher(..., batch_transform=fn)"
            )
        self.sources = tuple(sources)
        if not self.sources or not all(isinstance(s, Source) for s in self.sources):
            raise MixError(
                f"expected a non-empty list of loader.Source, got {list(sources)!r}: wrap each "
                "location as Source(location, weight=...)"
            )
        if decode == "device" or getattr(decode, "decodes_on_device", False):
            raise MixError(
                "expected decode on the CPU for a mix, got decode='device': decoding mixed "
                "batches on the device is not supported yet; use decode=True"
            )
        self.datasets = tuple(resolve_source(s.location, retry=retry) for s in self.sources)
        sizes = [d.num_samples for d in self.datasets]
        for src, size in zip(self.sources, sizes, strict=True):
            if size < 1:
                raise MixError(f"expected samples in source {src.label}, got an empty dataset")
        quotas = epoch_quotas(self.sources, sizes, epoch_size)
        shard_sizes = [[sh.nsamples for sh in d.shards] for d in self.datasets]
        self.mix = MixPlan(shard_sizes, quotas, seed=seed, exhaustion=exhaustion)
        self._labels = [_label_map(s, d) for s, d in zip(self.sources, self.datasets, strict=True)]
        self._counts = [len(d.classes) or _NO_CLASS_COUNT for d in self.datasets]
        classes = _merged_classes(self.sources, self.datasets, self._labels)
        self.policies = tuple(
            BadSamplePolicy(s.bad_samples or bad_samples, skip_budget) for s in self.sources
        )
        digest = self._digest()
        url = f"{MIX_SCHEME}{digest[:16]}"
        virtual = ShardSource(url, self.mix.epoch_size, 0, None, digest, None)
        names = ", ".join(s.label for s in self.sources)
        super().__init__(
            DatasetSource((virtual,), classes, self.mix.epoch_size, f"mix of {names}"),
            seed=seed,
            bad_samples=bad_samples,
            skip_budget=skip_budget,
            retry=retry,
            decode=decode,
            **options,
        )
        keep = 2 * len(self.sources) if options.get("cache_limit") is not None else KEEP_OPEN
        self._reuse = Reuse(self.latency_s, max(keep, 2 * len(self.sources)), self.remote)
        if self.mix.stopped_by is not None:
            first = self.mix.stopped_by
            log.warning(
                "exhaustion='stop': source %s (%d samples) runs out first, so each epoch holds "
                "%d positions (quotas %s) rather than %d",
                self.sources[first].label,
                sizes[first],
                self.mix.epoch_size,
                self.mix.quotas,
                sum(quotas),
            )

    def _digest(self) -> str:
        digest = hashlib.sha256(f"mix:{self.mix.exhaustion}:{self.mix.epoch_size}\n".encode())
        for src, data, quota in zip(self.sources, self.datasets, self.mix.quotas, strict=True):
            digest.update(f"{src.name}:{quota}:{fingerprint(data)}\n".encode())
        return digest.hexdigest()

    def _worker_stream(self, epoch: int) -> MixedStream:
        return MixedStream(self, self._reuse, epoch)

    def head_label(self, source: int, label: int) -> int:
        """The label the model sees for ``label`` of ``source``; ``DecodeError`` for a sample
        without one or one outside the source's classes."""
        table = self._labels[source]
        count = self._counts[source]
        if label < 0 or label >= count:
            problem = (
                "no class label (.cls member missing)"
                if label < 0
                else f"label {label} is outside the source's {count} classes"
            )
            raise DecodeError(problem)
        if isinstance(table, int):
            return label + table
        return int(table[label])

    def record(self, batch: Batch | ByteBatch, num_workers: int | None = None) -> None:
        """Count ``batch`` (a ``MixedBatch``) as received: its rows' positions."""
        self.resume.record(batch.position, batch.padded, num_workers)  # type: ignore[union-attr]

    def state_dict(self, num_workers: int | None = None) -> dict[str, Any]:
        """``ShardDataset.state_dict`` plus ``"mix"``: per source its name, quota, size and
        pass position at the start of the state's epoch."""
        state = super().state_dict(num_workers)
        state["mix"] = self._mix_state(int(state["epoch"]))
        return state

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """``ShardDataset.load_state_dict`` after checking each state's ``"mix"`` against this
        mix: ``ResumeError`` naming the source and field that differ."""
        for one in state if isinstance(state, list | tuple) else [state]:
            saved = one.get("mix") if isinstance(one, dict) else None
            if not isinstance(saved, dict):
                raise ResumeError(
                    "expected a state saved by a mixed loader (with a 'mix' entry), got none: "
                    "resume a mix from a mix's state_dict()"
                )
            self._check_mix(saved)
        super().load_state_dict(state)

    def _mix_state(self, epoch: int) -> dict[str, Any]:
        rows = self.mix.describe(epoch)
        for row, src in zip(rows, self.sources, strict=True):
            row["name"] = src.name
        return {"exhaustion": self.mix.exhaustion, "epoch": epoch, "sources": rows}

    def _check_mix(self, saved: dict[str, Any]) -> None:
        rows = saved.get("sources")
        if not isinstance(rows, list) or len(rows) != len(self.sources):
            got = len(rows) if isinstance(rows, list) else rows
            raise ResumeError(
                f"expected a state of a mix of {len(self.sources)} sources, got {got}: resume "
                "with the sources that saved it"
            )
        if saved.get("exhaustion") != self.mix.exhaustion:
            raise ResumeError(
                f"expected a state saved with exhaustion={self.mix.exhaustion!r}, got "
                f"exhaustion={saved.get('exhaustion')!r}: construct the loader with that"
            )
        mine = self._mix_state(int(saved.get("epoch", -1)))["sources"]
        for src, have, got in zip(self.sources, mine, rows, strict=True):
            for field in ("name", "quota", "size", "pass", "offset"):
                if not isinstance(got, dict) or got.get(field) != have[field]:
                    value = got.get(field) if isinstance(got, dict) else got
                    raise ResumeError(
                        f"expected source {src.label} of the saved state to have {field}="
                        f"{have[field]!r}, got {field}={value!r}: resume with the sources, "
                        "weights and epoch_size that saved it"
                    )

    def locate(self, gid: int) -> str:
        """Where epoch position ``gid`` of the next epoch is: its source, shard and id."""
        sources, ids = self.mix.lookup(self.next_epoch, np.asarray([gid]))
        s, sid = int(sources[0]), int(ids[0])
        data = self.datasets[s]
        shard = data.shards[data.shard_of(sid)]
        return f"source {self.sources[s].label} shard {shard.url} id {sid} (position {gid})"


def _label_map(source: Source, data: DatasetSource) -> int | np.ndarray:
    """An offset, or for a ``class_map`` the head label of each of the source's labels."""
    if source.class_map is None:
        return source.label_offset
    if not data.classes:
        raise MixError(
            f"expected class names in source {source.label} for its class_map, got shards "
            "that name no classes: use label_offset instead"
        )
    missing = [c for c in data.classes if c not in source.class_map]
    if missing:
        raise MixError(
            f"expected class_map of source {source.label} to map every class of it, got no "
            f"label for {missing[:5]}: add them to class_map"
        )
    table = np.asarray([source.class_map[c] for c in data.classes], dtype=np.int64)
    if table.size and table.min() < 0:
        raise MixError(f"expected class_map labels >= 0 for source {source.label}")
    return table


def _merged_classes(
    sources: Sequence[Source],
    datasets: Sequence[DatasetSource],
    labels: Sequence[int | np.ndarray],
) -> tuple[str, ...]:
    """The head's class names: each source's names at their head labels. ``()`` when some
    source names no classes; ``MixError`` when two names land on one label."""
    if not all(d.classes for d in datasets):
        return ()
    names: dict[int, tuple[str, str]] = {}
    for src, data, table in zip(sources, datasets, labels, strict=True):
        for i, name in enumerate(data.classes):
            head = i + table if isinstance(table, int) else int(table[i])
            other = names.setdefault(head, (name, src.label))
            if other[0] != name:
                raise MixError(
                    f"expected one class name per label, got label {head} for {other[0]!r} "
                    f"of source {other[1]} and {name!r} of source {src.label}: give a "
                    "label_offset or class_map"
                )
    size = max(names) + 1
    return tuple(names[i][0] if i in names else "" for i in range(size))


def as_mix(source: object) -> list[Source] | None:
    """The sources ``make_loader`` mixes for ``source``: a list of ``Source``s as given; a list
    of manifests (paths or URLs ending in ``.json`` or ``/``, or folders holding one) as
    ``Source(m, repeat=1)`` each, every sample once per epoch; anything else (a single
    location, a list of shards) ``None``. A list mixing ``Source``s or manifests with other
    items is a ``MixError`` that points to ``Source``."""
    if isinstance(source, str | bytes | os.PathLike) or not isinstance(source, Sequence):
        return None
    items = list(source)
    if not items:
        return None
    kinds = [_kind(item) for item in items]
    if all(k == "source" for k in kinds):
        return items
    if all(k == "manifest" for k in kinds):
        return [Source(os.fspath(m), repeat=1) for m in items]
    if all(k == "shard" for k in kinds) or "other" in kinds:
        return None
    raise MixError(
        f"expected a list of shards, of manifests or of loader.Source, got a mix of them "
        f"({', '.join(sorted(set(kinds)))}): to mix datasets, pass "
        "[Source(location, weight=...), ...]"
    )


def _kind(item: object) -> str:
    if isinstance(item, Source):
        return "source"
    if not isinstance(item, str | os.PathLike):
        return "other"
    text = os.fspath(item)
    if text.endswith((".json", "/")) or os.path.isdir(text):
        return "manifest"
    return "shard"
