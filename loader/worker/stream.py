"""``WorkerStream``: one worker's batches for one epoch: read -> shuffle -> check -> decode ->
``Batch`` (docs/architecture.md, "Data flow" steps 6-8).

It runs inside a DataLoader worker (or the main process with ``num_workers=0``) and owns,
for that epoch, one batch builder whose buffers come from the process's pools
(``loader.worker.reuse``) and one ``SkipCounter`` (``loader.badsamples``: the budget counts
this worker's skips in this epoch). Readers stay open across epochs in ``Reuse``. With a
per-sample transform the builder is a ``TransformBatchBuilder`` (``loader.transforms``), and a
transform's error is raised naming the sample's shard and member, under every bad-sample
policy (docs/architecture.md, "Transforms").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from loader.badsamples import BadSampleError
from loader.batch import Batch, BatchBuilder
from loader.decode import DecodeError
from loader.device.bytebatch import ByteBatch, ByteBatchBuilder, Planner
from loader.plan.shuffle import emission_order, kept_segments, plan_ids, reorder
from loader.reader import RawSample, ShardReader
from loader.remote.redact import redact
from loader.transforms.builder import TransformBatchBuilder
from loader.transforms.errors import UnplacedTransformError
from loader.transforms.seeding import SampleSeeder
from loader.worker.pools import CAPACITY

if TYPE_CHECKING:
    from loader.badsamples import BadSamplePolicy
    from loader.decode import Decoder
    from loader.plan.partition import Segment, WorkerPlan
    from loader.remote.options import RemoteOptions
    from loader.sources import DatasetSource, ShardSource
    from loader.transforms.sample import SampleTransform
    from loader.worker.reuse import Reuse

__all__ = ["IN_FLIGHT_ITEMS", "StreamSettings", "WorkerStream"]

log = logging.getLogger("shardfeed.loader")
IN_FLIGHT_ITEMS = 4  # items a worker's buffers serve at once: queued, built, held by the trainer
_NO_CLASS_COUNT = 1 << 62  # foreign shards name no classes: any label >= 0 is taken


def _label_problem(label: int, classes: int) -> str:
    if label < 0:
        return "no class label (.cls member missing, or not a whole number below 2^63)"
    return f"label {label} is outside the manifest's {classes} classes (expected 0..{classes - 1})"


class StreamSettings(Protocol):
    """What a ``WorkerStream`` reads of its dataset (``ShardDataset`` has all of it)."""

    source: DatasetSource
    decoder: Decoder
    remote: RemoteOptions
    bad_sample_policy: BadSamplePolicy
    batch_size: int
    shuffle_buffer: int
    train: bool
    decode: bool
    latency_s: float
    transfer_batches: int
    seed: int
    transform: SampleTransform | None

    @property
    def bad_samples(self) -> str: ...


class WorkerStream:
    """The batches of ``dataset`` that this process yields in ``epoch``, reading through
    ``reuse``."""

    def __init__(self, dataset: StreamSettings, reuse: Reuse, epoch: int = 0) -> None:
        self.dataset = dataset
        self.reuse = reuse
        self.epoch = epoch

    def _builder(self) -> BatchBuilder | ByteBatchBuilder | TransformBatchBuilder:
        """A batch builder for this worker, its buffers from this process's pools."""
        capacity = max(CAPACITY, IN_FLIGHT_ITEMS * self.dataset.transfer_batches)
        if getattr(self.dataset.decoder, "decodes_on_device", False):
            planner = cast(Planner, self.dataset.decoder)
            return ByteBatchBuilder(
                self.dataset.batch_size, planner, pools=lambda n: self.reuse.pool(n, capacity)
            )
        side = self.dataset.decoder.image_size
        pool = self.reuse.pool(self.dataset.batch_size * side * side * 3, capacity)
        if self.dataset.transform is not None:
            seeder = SampleSeeder(self.dataset.seed, self.epoch)
            return TransformBatchBuilder(
                self.dataset.batch_size,
                self.dataset.decoder,
                self.dataset.transform,
                seeder,
                pool=pool,
            )
        return BatchBuilder(self.dataset.batch_size, side, self.dataset.decoder, pool=pool)

    def batches(
        self, plan: WorkerPlan, rng: np.random.Generator, skip: int, key: list[int]
    ) -> Iterator[Batch | ByteBatch]:
        """The plan's batches from batch ``skip`` on. ``rng`` draws the shuffle order; batch
        ``j``'s crops come from ``default_rng(key + [j])``, so they do not depend on ``skip``."""
        builder = self._builder()
        ids = plan_ids(plan)
        order = emission_order(
            len(ids), self.dataset.shuffle_buffer if self.dataset.train else 0, rng
        )
        done = min(skip * self.dataset.batch_size, len(ids))
        segments: Sequence[Segment] = plan.segments
        if done:
            skipped = np.zeros(len(ids), dtype=bool)
            skipped[np.fromiter(islice(order, done), np.int64, done)] = True
            segments = kept_segments(plan, skipped)
        pads = list(plan.pad_ids)[skip * self.dataset.batch_size - done :]
        augment = self.dataset.decode and self.dataset.train
        index = skip
        draw = np.random.default_rng([*key, index]) if augment else rng
        id_list = ids.tolist()
        bad = self.dataset.bad_sample_policy.counter()
        fillers = 0
        last_good: int | None = None
        add, full = builder.add, self.dataset.batch_size
        classes = len(self.dataset.source.classes) or _NO_CLASS_COUNT
        for sample in reorder(self._samples(segments), (id_list[i] for i in order)):
            try:
                if not 0 <= sample.label < classes:
                    raise DecodeError(_label_problem(sample.label, classes))
                add(sample.data, sample.label, sample.gid, draw)
                last_good = sample.gid
            except DecodeError as exc:
                bad.bad(self._where(sample), exc)
                fillers += 1
            except UnplacedTransformError as exc:
                raise exc.at(self._where(sample)) from exc.__cause__
            while fillers and len(builder) and not builder.full:
                builder.repeat(0)
                fillers -= 1
            if len(builder) == full:
                yield builder.finish()
                index += 1
                if augment:
                    draw = np.random.default_rng([*key, index])
        if fillers:
            if last_good is None:
                raise BadSampleError(
                    f"every sample of this worker's range was bad ({bad.skipped} skipped): "
                    "nothing to fill the batch with"
                )
            pads = [last_good] * fillers + pads
        for gid in pads:
            pad = self._read_one(gid)
            try:
                builder.add(pad.data, pad.label, gid, draw, padded=True)
            except UnplacedTransformError as exc:
                raise exc.at(self._where(pad)) from exc.__cause__
            if builder.full:
                yield builder.finish()
        if len(builder):
            yield builder.finish()

    def _samples(self, segments: Sequence[Segment]) -> Iterator[RawSample]:
        """The segments' samples; readers stay open for later epochs (``loader.worker.reuse``)."""
        for i, seg in enumerate(segments):
            shard = self.dataset.source.shards[seg.shard]
            try:
                samples = self.reuse.reader(shard).read(seg.start, seg.stop)
                if i + 1 < len(segments):  # read-ahead: the next shard opens meanwhile
                    nxt = segments[i + 1]
                    self.reuse.prefetch(self.dataset.source.shards[nxt.shard], nxt.start, nxt.stop)
                yield from samples
            # A reader that failed is dropped. GeneratorExit (the shuffle stopped pulling once it
            # had the plan's samples, every epoch) is not a failure: the reader stays open.
            except Exception:
                self.reuse.forget(shard)
                raise

    def _read_one(self, gid: int) -> RawSample:
        shard = self.dataset.source.shard_of(gid)
        reader = ShardReader(
            self.dataset.source.shards[shard],
            latency_s=self.dataset.latency_s,
            remote=self.dataset.remote,
        )
        try:
            pos = gid - self.dataset.source.shards[shard].first_index
            sample = next(iter(reader.read(pos, pos + 1)))
            return sample._replace(data=bytes(sample.data))
        finally:
            reader.close()

    def _where(self, sample: RawSample) -> str:
        """Shard, member, position, id and offset of ``sample``, for messages."""
        shard = self.dataset.source.shards[self.dataset.source.shard_of(sample.gid)]
        member = self._member_name(shard, sample)
        return (
            f"shard {shard.url} member {member} (sample {sample.position}, id {sample.gid}) "
            f"at byte offset {sample.offset}"
        )

    def _member_name(self, shard: ShardSource, sample: RawSample) -> str:
        """The image member's name in the tar, for messages. Without a key (the sidecar index
        was used) it reads the member's header; with one, only ``"raise"`` pays for a scan."""
        if sample.key and self.dataset.bad_samples == "skip":
            return f"{sample.key}.*"
        reader = ShardReader(shard, remote=self.dataset.remote)
        try:
            return reader.member_name(sample.position)
        except (OSError, ValueError) as exc:
            where = redact(shard.url)
            log.debug("no member name for %s sample %d: %s", where, sample.position, redact(exc))
            return sample.key or f"<sample {sample.position}>"
        finally:
            reader.close()
