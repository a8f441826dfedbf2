"""``ShardDataset``: every worker of every rank reads a disjoint, balanced part of the shards.

Each worker computes its own ``WorkerPlan`` (``loader.partition``) from the manifest, the seed,
the epoch, its rank and its worker index: no communication, no locks. It reads its segments
sequentially (seeking into its first shard through the sidecar index), passes samples through a
bounded shuffle buffer, decodes each straight into a preallocated batch array and yields whole
``Batch`` objects, so the main process does no per-sample work.

Bad samples (undecodable bytes, no label): with ``bad_samples="skip"`` the sample is not
delivered, its batch slot is filled with a copy of another sample of the same batch marked
``padded`` (so every rank still yields the planned number of batches), and a warning names the
shard, member and offset; more than ``skip_budget`` skips in one worker's epoch raise. With
``"raise"`` the first one raises ``BadSampleError``. Worker exceptions reach the main process
through the DataLoader with that message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from loader._epoch import SharedEpoch
from loader._ranges import check_int
from loader._recycle import CAPACITY
from loader._reuse import Reuse
from loader.batch import Batch, BatchBuilder, BatchGroup, grouped
from loader.decode import DecodeError, ImageDecoder, NoDecode
from loader.partition import EVEN_POLICIES, WorkerPlan, plan_epoch, plan_worker
from loader.reader import RawSample, ShardReader
from loader.sources import DatasetSource, ShardSource, resolve_source

__all__ = ["BadSampleError", "ShardDataset", "distributed_context"]

log = logging.getLogger("shardfeed.loader")
BAD_SAMPLE_POLICIES = ("skip", "raise")
IN_FLIGHT_ITEMS = 4  # items a worker's buffers serve at once: queued, built, held by the trainer
_DRAWS = 1024  # shuffle-buffer slots drawn per call: one call per sample costs ~2 us


_NO_CLASS_COUNT = 1 << 62  # foreign shards name no classes: any label >= 0 is taken


def _label_problem(label: int, classes: int) -> str:
    if label < 0:
        return "no class label (.cls member missing)"
    return f"label {label} is outside the manifest's {classes} classes (expected 0..{classes - 1})"


class BadSampleError(ValueError):
    """A sample that cannot be delivered; the message names the shard, member and offset."""


def distributed_context(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else ``torch.distributed``, else RANK/WORLD_SIZE."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if env_rank is not None and env_world is not None:
        try:
            return int(env_rank), int(env_world)
        except ValueError:
            raise ValueError(
                f"expected integers in RANK/WORLD_SIZE, got RANK={env_rank!r} "
                f"WORLD_SIZE={env_world!r}"
            ) from None
    return 0, 1


def _check_rank(rank: int | None, world_size: int | None) -> None:
    if rank is None and world_size is None:
        return
    if rank is None or world_size is None:
        raise ValueError(
            f"expected rank and world_size both given or both None, got rank={rank!r} "
            f"world_size={world_size!r}"
        )
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0, world_size)


class ShardDataset(IterableDataset[Batch | BatchGroup]):
    """Streams ``Batch`` objects (uint8 ``[B, H, W, 3]`` images, labels, global ids, padded).

    ``source``: a manifest path or URL, a shard list or a brace pattern (``loader.sources``).
    ``image_size=0`` or ``decode=False`` skips decoding (benchmarks of the pipeline itself).
    Rank and world size are read when iteration starts (``distributed_context``), so the same
    object works before and after ``torch.distributed`` is initialised. A copy pickled while
    ``torch.distributed`` is initialised (a DataLoader starting spawned workers) carries the
    rank and world size with it, since the process group does not reach such a worker.
    ``transfer_batches > 1`` makes iteration yield, after a first lone batch, ``BatchGroup``s
    of that many consecutive batches (fewer DataLoader items, see ``loader.batch.grouped``);
    ``make_loader``'s ``ClosingDataLoader`` unpacks them, a plain ``DataLoader`` does not.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str] | DatasetSource,
        *,
        batch_size: int = 256,
        image_size: int = 224,
        train: bool = True,
        decode: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        even: str = "pad",
        bad_samples: str = "skip",
        skip_budget: int = 100,
        latency_ms: float = 0.0,
        transfer_batches: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        check_int("batch_size", batch_size, 1)
        check_int("transfer_batches", transfer_batches, 1)
        check_int("image_size", image_size, 0)
        check_int("seed", seed, 0)
        check_int("shuffle_buffer", shuffle_buffer, 0)
        if even not in EVEN_POLICIES:
            raise ValueError(f"expected even in {EVEN_POLICIES}, got even={even!r}")
        if bad_samples not in BAD_SAMPLE_POLICIES:
            raise ValueError(
                f"expected bad_samples in {BAD_SAMPLE_POLICIES}, got bad_samples={bad_samples!r}"
            )
        check_int("skip_budget", skip_budget, 0)
        if not isinstance(latency_ms, int | float) or not latency_ms >= 0:
            raise ValueError(f"expected latency_ms >= 0, got latency_ms={latency_ms!r}")
        _check_rank(rank, world_size)
        self.source = source if isinstance(source, DatasetSource) else resolve_source(source)
        self.batch_size = batch_size
        self.image_size = image_size
        self.train = train
        self.decode = decode and image_size > 0
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.even = even
        self.bad_samples = bad_samples
        self.skip_budget = skip_budget
        self.latency_s = latency_ms / 1000.0
        self.transfer_batches = transfer_batches
        self._rank, self._world = rank, world_size
        self._epoch = SharedEpoch()
        self._reuse = Reuse(self.latency_s)
        self._sizes = np.array([s.nsamples for s in self.source.shards], dtype=np.int64)
        if self._world is not None and self._world > self.num_samples:
            raise ValueError(
                f"world_size={self._world} is larger than the number of samples "
                f"{self.num_samples} in {self.source.origin}: every rank needs one sample"
            )

    def __getstate__(self) -> dict[str, Any]:
        """The state to pickle, with the rank and world size pinned when ``torch.distributed``
        is initialised here (a spawned worker has no process group to ask)."""
        state = dict(self.__dict__)
        if state["_rank"] is None and torch.distributed.is_available():
            if torch.distributed.is_initialized():
                state["_rank"], state["_world"] = distributed_context()
        return state

    @property
    def num_samples(self) -> int:
        return self.source.num_samples

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration (in every worker, persistent ones too) use ``epoch``."""
        self._epoch.set(epoch)

    @property
    def next_epoch(self) -> int:
        return self._epoch.peek()

    def epoch_plan(self, epoch: int, num_workers: int) -> list[WorkerPlan]:
        """This rank's worker plans for ``epoch``: what it will yield, pad and drop."""
        rank, world = distributed_context(self._rank, self._world)
        return plan_epoch(
            self._sizes,
            seed=self.seed,
            epoch=epoch,
            world_size=world,
            num_workers=num_workers,
            batch_size=self.batch_size,
            even=self.even,
        )[rank]

    def batches_per_epoch(self, num_workers: int = 0) -> int:
        """Batches this rank yields per epoch (the same every epoch)."""
        return sum(p.num_batches for p in self.epoch_plan(0, num_workers))

    def __iter__(self) -> Iterator[Batch | BatchGroup]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 0)
        epoch = self._epoch.begin(worker if info is not None else SharedEpoch.MAIN)
        rank, world = distributed_context(self._rank, self._world)
        plan = plan_worker(
            self._sizes,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world,
            worker=worker,
            num_workers=num_workers,
            batch_size=self.batch_size,
            even=self.even,
        )
        if plan.drop:
            log.info(
                "even='drop': rank %d worker %d leaves out %d sample(s) in epoch %d",
                rank,
                worker,
                plan.drop,
                epoch,
            )
        rng = np.random.default_rng([self.seed, epoch, rank, worker])
        return grouped(self._batches(plan, rng), self.transfer_batches)

    def _batches(self, plan: WorkerPlan, rng: np.random.Generator) -> Iterator[Batch]:
        decoder = ImageDecoder(self.image_size, train=self.train) if self.decode else NoDecode()
        side = self.image_size if self.decode else 0
        in_flight = IN_FLIGHT_ITEMS * self.transfer_batches
        pool = self._reuse.pool(self.batch_size * side * side * 3, max(CAPACITY, in_flight))
        builder = BatchBuilder(self.batch_size, side, decoder, pool=pool)
        skipped = 0
        fillers = 0
        last_good: int | None = None
        add, full = builder.add, self.batch_size
        classes = len(self.source.classes) or _NO_CLASS_COUNT
        for sample in self._shuffled(self._samples(plan), rng):
            try:
                if not 0 <= sample.label < classes:
                    raise DecodeError(_label_problem(sample.label, classes))
                add(sample.data, sample.label, sample.gid, rng)
                last_good = sample.gid
            except DecodeError as exc:
                skipped += 1
                self._bad_sample(sample, exc, skipped)
                fillers += 1
            while fillers and len(builder) and not builder.full:
                builder.repeat(0)
                fillers -= 1
            if len(builder) == full:
                yield builder.finish()
        pads = list(plan.pad_ids)
        if fillers:
            if last_good is None:
                raise BadSampleError(
                    f"every sample of this worker's range was bad ({skipped} skipped): "
                    "nothing to fill the batch with"
                )
            pads = [last_good] * fillers + pads
        for gid in pads:
            pad = self._read_one(gid)
            builder.add(pad.data, pad.label, gid, rng, padded=True)
            if builder.full:
                yield builder.finish()
        if len(builder):
            yield builder.finish()

    def _samples(self, plan: WorkerPlan) -> Iterator[RawSample]:
        """The plan's samples; readers stay open for later epochs (``loader._reuse``)."""
        for seg in plan.segments:
            shard = self.source.shards[seg.shard]
            try:
                yield from self._reuse.reader(shard).read(seg.start, seg.stop)
            except BaseException:
                self._reuse.forget(shard)
                raise

    def _read_one(self, gid: int) -> RawSample:
        shard = self._shard_of(gid)
        reader = ShardReader(self.source.shards[shard], latency_s=self.latency_s)
        try:
            pos = gid - self.source.shards[shard].first_index
            sample = next(iter(reader.read(pos, pos + 1)))
            return sample._replace(data=bytes(sample.data))
        finally:
            reader.close()

    def _shuffled(self, samples: Iterator[RawSample], rng: np.random.Generator) -> Iterator[Any]:
        size = self.shuffle_buffer if self.train else 0
        if size <= 1:
            yield from samples
            return
        buf: list[RawSample] = []
        draws: list[int] = []
        for s in samples:
            if len(buf) < size:
                buf.append(s)
                continue
            if not draws:
                draws = rng.integers(size, size=_DRAWS).tolist()[::-1]
            i = draws.pop()
            buf[i], s = s, buf[i]
            yield s
        rng.shuffle(buf)
        yield from buf

    def _bad_sample(self, sample: RawSample, exc: Exception, skipped: int) -> None:
        shard = self.source.shards[self._shard_of(sample.gid)]
        member = self._member_name(shard, sample)
        where = (
            f"shard {shard.url} member {member} (sample {sample.position}, id {sample.gid}) "
            f"at byte offset {sample.offset}"
        )
        if self.bad_samples == "raise":
            raise BadSampleError(f"bad sample in {where}: {exc}") from exc
        log.warning("skipping bad sample in %s: %s", where, exc)
        if skipped > self.skip_budget:
            raise BadSampleError(
                f"more than skip_budget={self.skip_budget} bad samples in one worker's epoch; "
                f"last in {where}: {exc}"
            )

    def _member_name(self, shard: ShardSource, sample: RawSample) -> str:
        """The image member's name in the tar, for messages. Without a key (the sidecar index
        was used) it reads the member's header; with one, only ``"raise"`` pays for a scan."""
        if sample.key and self.bad_samples == "skip":
            return f"{sample.key}.*"
        reader = ShardReader(shard)
        try:
            return reader.member_name(sample.position)
        except (OSError, ValueError) as exc:
            log.debug("no member name for %s sample %d: %s", shard.url, sample.position, exc)
            return sample.key or f"<sample {sample.position}>"
        finally:
            reader.close()

    def _shard_of(self, gid: int) -> int:
        firsts = [s.first_index for s in self.source.shards]
        return int(np.searchsorted(firsts, gid, side="right")) - 1

    def __len__(self) -> int:
        return self.batches_per_epoch(0)
