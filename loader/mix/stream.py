"""``MixedStream``: one worker's batches of a mixed epoch (docs/architecture.md, "Mixing").

The worker's plan is a set of position runs of the mixed epoch (``loader.plan.partition`` over
the epoch as one shard). The interleave fixes the source of every slot; each source's samples
in the worker's range are read in stream order (runs contiguous inside shards) and shuffled by a
buffer of its own (``loader.plan.shuffle.emission_order``, seeded from the worker's key and the
source), then placed in that source's slots. So a batch holds exactly the interleave's mix, and
a row's ``position`` is the position its sample was planned at (what resume marks taken).
A resumed worker skips its first batches unread, as ``WorkerStream`` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from loader.badsamples import BadSampleError, SkipCounter
from loader.batch import Batch, BatchBuilder
from loader.decode import DecodeError
from loader.mix.batch import MixedBatch, MixedBuilder
from loader.plan.partition import Segment, WorkerPlan
from loader.plan.shuffle import emission_order, kept_segments
from loader.reader import RawSample, ShardReader
from loader.worker.stream import StreamSettings, WorkerStream

if TYPE_CHECKING:
    from loader.badsamples import BadSamplePolicy
    from loader.device.bytebatch import ByteBatch
    from loader.mix.passes import Run
    from loader.mix.plan import MixPlan
    from loader.mix.source import Source
    from loader.sources import DatasetSource
    from loader.worker.reuse import Reuse

__all__ = ["MixedStream"]

_SOURCE_TAG = 0x534F55  # keeps a source's shuffle generator apart from the worker's own


class MixSettings(StreamSettings, Protocol):
    """What a ``MixedStream`` reads of its dataset (``MixedDataset`` has all of it)."""

    sources: tuple[Source, ...]
    datasets: tuple[DatasetSource, ...]
    mix: MixPlan
    policies: tuple[BadSamplePolicy, ...]

    def head_label(self, source: int, label: int) -> int: ...


class MixedStream(WorkerStream):
    """The batches of ``dataset`` (a ``MixedDataset``) this process yields in ``epoch``."""

    def __init__(self, dataset: MixSettings, reuse: Reuse, epoch: int) -> None:
        super().__init__(dataset, reuse, epoch)
        self.mixed = dataset
        self.epoch = epoch

    def batches(
        self, plan: WorkerPlan, rng: np.random.Generator, skip: int, key: list[int]
    ) -> Iterator[Batch | ByteBatch]:
        """``MixedBatch``es (typed as the stream's items) of ``plan`` from batch ``skip`` on;
        crops of batch ``j`` from ``default_rng(key + [j])`` as in ``WorkerStream``."""
        return cast("Iterator[Batch | ByteBatch]", self._mixed(plan, rng, skip, key))

    def _mixed(
        self, plan: WorkerPlan, rng: np.random.Generator, skip: int, key: list[int]
    ) -> Iterator[MixedBatch]:
        ds, mix = self.mixed, self.mixed.mix
        runs = [(s.first_id, s.first_id + len(s)) for s in plan.segments]
        inter = mix.interleave(self.epoch)
        empty = np.zeros(0, dtype=np.int64)
        slots = np.concatenate([inter.sources(a, b) for a, b in runs] or [empty])
        positions = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in runs] or [empty])
        reads = mix.reads(self.epoch, runs)
        done = min(skip * ds.batch_size, len(slots))
        size = ds.shuffle_buffer if ds.train else 0
        streams: list[Iterator[tuple[int, RawSample]]] = []
        for s, src_runs in enumerate(reads):
            mine = positions[slots == s]
            order = np.fromiter(
                emission_order(len(mine), size, np.random.default_rng([*key, _SOURCE_TAG, s])),
                np.int64,
                len(mine),
            )
            gone = int(np.count_nonzero(slots[:done] == s))
            streams.append(self._source(s, src_runs, mine, order, gone))
        builder = MixedBuilder(cast(BatchBuilder, self._builder()))
        augment = ds.decode and ds.train
        index = skip
        draw = np.random.default_rng([*key, index]) if augment else rng
        counters = [p.counter() for p in ds.policies]
        fillers, last_good = 0, None
        inner, tags, full = builder.builder, builder.tags, ds.batch_size
        head_label, add = ds.head_label, inner.add
        for s in slots[done:].tolist():
            position, sample = next(streams[s])
            try:
                add(sample.data, head_label(s, sample.label), sample.gid, draw)
                tags.append((s, position))
                last_good = (s, position, sample.gid)
            except DecodeError as exc:
                counters[s].bad(self._where_in(s, sample), exc)
                fillers += 1
            while fillers and len(inner) and not inner.full:
                builder.repeat(0)
                fillers -= 1
            if len(inner) == full:
                yield builder.finish()
                tags = builder.tags
                index += 1
                if augment:
                    draw = np.random.default_rng([*key, index])
        pads = [int(p) for p in plan.pad_ids][skip * ds.batch_size - done :]
        yield from self._pads(builder, pads, fillers, last_good, counters, draw)

    def _pads(
        self,
        builder: MixedBuilder,
        pads: list[int],
        fillers: int,
        last_good: tuple[int, int, int] | None,
        counters: Sequence[SkipCounter],
        draw: np.random.Generator,
    ) -> Iterator[MixedBatch]:
        """The padded rows: fillers for skipped samples, then the plan's pad positions."""
        rows: list[tuple[int, int, int]] = []
        if fillers:
            if last_good is None:
                skipped = sum(c.skipped for c in counters)
                raise BadSampleError(
                    f"every sample of this worker's range was bad ({skipped} skipped): "
                    "nothing to fill the batch with"
                )
            rows = [last_good] * fillers
        if pads:
            sources, ids = self.mixed.mix.lookup(self.epoch, np.asarray(pads, dtype=np.int64))
            rows += list(zip(sources.tolist(), pads, ids.tolist(), strict=True))
        for s, position, gid in rows:
            sample = self._read_in(s, gid)
            label = self.mixed.head_label(s, sample.label)
            builder.add(sample.data, label, gid, draw, (s, position), padded=True)
            if builder.full:
                yield builder.finish()
        if len(builder):
            yield builder.finish()

    def _source(
        self,
        s: int,
        runs: list[Run],
        positions: np.ndarray,
        order: np.ndarray,
        gone: int,
    ) -> Iterator[tuple[int, RawSample]]:
        """Source ``s``'s samples in the order ``order`` (indices into its ``runs`` in stream
        order; ``positions`` their epoch positions), less the first ``gone``, which are never
        read. Reads sequentially, holding a sample only while the buffer would have."""
        whole = WorkerPlan(tuple(Segment(*r) for r in runs), len(positions), 0)
        segments: Sequence[Segment] = whole.segments
        kept = np.arange(len(positions))
        if gone:
            skipped = np.zeros(len(positions), dtype=bool)
            skipped[order[:gone]] = True
            segments = kept_segments(whole, skipped)
            kept = np.flatnonzero(~skipped)
        samples = zip(kept.tolist(), self._read_runs(s, segments), strict=True)
        pending: dict[int, RawSample] = {}
        where = positions.tolist()
        for i in order[gone:].tolist():
            sample = pending.pop(i, None)
            while sample is None:
                j, got = next(samples)
                if j == i:
                    sample = got
                else:
                    pending[j] = got
            yield where[i], sample

    def _read_runs(self, s: int, segments: Sequence[Segment]) -> Iterator[RawSample]:
        shards = self.mixed.datasets[s].shards
        for i, seg in enumerate(segments):
            shard = shards[seg.shard]
            try:
                samples = self.reuse.reader(shard).read(seg.start, seg.stop)
                if i + 1 < len(segments) and segments[i + 1].shard != seg.shard:
                    nxt = segments[i + 1]
                    self.reuse.prefetch(shards[nxt.shard], nxt.start, nxt.stop)
                yield from samples
            except BaseException:
                self.reuse.forget(shard)
                raise

    def _read_in(self, s: int, gid: int) -> RawSample:
        source = self.mixed.datasets[s]
        shard = source.shards[source.shard_of(gid)]
        reader = ShardReader(shard, latency_s=self.mixed.latency_s, remote=self.mixed.remote)
        try:
            pos = gid - shard.first_index
            sample = next(iter(reader.read(pos, pos + 1)))
            return sample._replace(data=bytes(sample.data))
        finally:
            reader.close()

    def _where_in(self, s: int, sample: RawSample) -> str:
        """Source, shard, member, position, id and offset of ``sample``, for messages."""
        source = self.mixed.datasets[s]
        shard = source.shards[source.shard_of(sample.gid)]
        member = self._member_name(shard, sample)
        return (
            f"source {self.mixed.sources[s].label} shard {shard.url} member {member} "
            f"(sample {sample.position}, id {sample.gid}) at byte offset {sample.offset}"
        )
