"""``ShardDataset``: every worker of every rank reads a disjoint, balanced part of the shards.

Each worker computes its own ``WorkerPlan`` (``loader.partition``) from the manifest, the seed,
the epoch, its rank and its worker index: no communication, no locks. It reads its segments
sequentially (seeking into its first shard through the sidecar index), passes samples through a
bounded shuffle buffer, decodes each straight into a preallocated batch array and yields whole
``Batch`` objects, so the main process does no per-sample work.

Resume (docs/architecture.md, section "Resume"): ``state_dict()`` says what the training loop
received (``record`` is called per batch it receives; ``make_loader``'s loader does that),
``load_state_dict()`` makes the next iteration deliver the rest of that epoch, for any topology
(``loader.resume``). The in-worker shuffle is an order drawn over the plan before reading
(``loader._shuffle``), and crops are drawn per batch from a generator seeded by the batch's
index, so a resumed worker skips its first batches unread and yields the rest unchanged.

Bad samples (undecodable bytes, no label): with ``bad_samples="skip"`` the sample is not
delivered, its batch slot is filled with a copy of another sample of the same batch marked
``padded`` (so every rank still yields the planned number of batches), and a warning names the
shard, member and offset; more than ``skip_budget`` skips in one worker's epoch raise. With
``"raise"`` the first one raises ``BadSampleError``. Worker exceptions reach the main process
through the DataLoader with that message.

The decoder is a parameter (``decode``): ``True``/``"opencv"`` decodes in the workers
(``ImageDecoder``), ``False``/``"none"`` only checks the bytes (``NoDecode``), ``"device"`` ships
compressed bytes and crop parameters in ``ByteBatch``es for the device to decode
(``DeviceDecoder``; ``DevicePrefetcher`` decodes them), and any ``Decoder`` object is used as
given (one with ``decodes_on_device`` true gets byte batches).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from loader._checks import check_int, check_non_negative
from loader._consumed import Progress
from loader._epoch import SharedEpoch
from loader._netstats import NetCounters
from loader._recycle import CAPACITY
from loader._resumable import Resumable
from loader._reuse import KEEP_OPEN, Reuse
from loader._shuffle import emission_order, kept_segments, plan_ids, reorder, worker_seed
from loader.batch import Batch, BatchBuilder, BatchGroup, grouped
from loader.bytebatch import ByteBatch, ByteBatchBuilder, Planner
from loader.decode import DecodeError, Decoder, ImageDecoder, NoDecode
from loader.devicedecode import DeviceDecoder
from loader.partition import EVEN_POLICIES, Segment, WorkerPlan, plan_rank
from loader.ranks import rank_and_world
from loader.reader import RawSample, RemoteOptions, ShardReader
from loader.resume import LoaderState, next_worker, resume_point
from loader.retry import RetryPolicy
from loader.sources import DatasetSource, ShardSource, resolve_source

__all__ = ["BadSampleError", "ShardDataset", "make_decoder"]

log = logging.getLogger("shardfeed.loader")
BAD_SAMPLE_POLICIES = ("skip", "raise")
DECODE_CHOICES = ("opencv", "none", "device")
IN_FLIGHT_ITEMS = 4  # items a worker's buffers serve at once: queued, built, held by the trainer


_NO_CLASS_COUNT = 1 << 62  # foreign shards name no classes: any label >= 0 is taken


def _label_problem(label: int, classes: int) -> str:
    if label < 0:
        return "no class label (.cls member missing, or not a whole number below 2^63)"
    return f"label {label} is outside the manifest's {classes} classes (expected 0..{classes - 1})"


class BadSampleError(ValueError):
    """A sample that cannot be delivered; the message names the shard, member and offset."""


def make_decoder(decode: bool | str | Decoder, image_size: int, train: bool) -> Decoder:
    """The decoder ``ShardDataset`` uses for ``decode`` (see the module doc); ``ValueError``
    for anything else. ``image_size`` 0 means no decoding, except with ``"device"``."""
    if isinstance(decode, str):
        if decode not in DECODE_CHOICES:
            raise ValueError(
                f"expected decode in {DECODE_CHOICES}, a bool or a Decoder, got decode={decode!r}"
            )
        if decode == "device":
            if image_size < 1:
                raise ValueError(
                    f"expected image_size >= 1 with decode='device', got image_size={image_size}"
                )
            return DeviceDecoder(image_size, train=train)
        decode = decode == "opencv"
    if isinstance(decode, bool):
        return ImageDecoder(image_size, train=train) if decode and image_size > 0 else NoDecode()
    if not callable(decode) or not isinstance(getattr(decode, "image_size", None), int):
        raise ValueError(
            f"expected decode in {DECODE_CHOICES}, a bool or a Decoder (callable, with an int "
            f"image_size), got decode={decode!r}"
        )
    if getattr(decode, "decodes_on_device", False) and not (
        callable(getattr(decode, "plan", None)) and callable(getattr(decode, "decode_batch", None))
    ):
        raise ValueError(
            f"expected a decoder that decodes on the device to have plan() and decode_batch(), "
            f"got decode={decode!r}"
        )
    return decode


class ShardDataset(Resumable, IterableDataset[Batch | ByteBatch | BatchGroup]):
    """Streams ``Batch`` objects (uint8 ``[B, H, W, 3]`` images, labels, global ids, padded),
    or ``ByteBatch``es with a decoder that decodes on the device.

    ``source``: a manifest path or URL, a shard list or a brace pattern (``loader.sources``).
    ``image_size=0`` or ``decode=False`` skips decoding (benchmarks of the pipeline itself).
    ``decode``: see the module doc; a ``Decoder`` object brings its own ``image_size`` (the
    argument is then not used) and crop mode, while ``train`` still turns shuffling on.
    Rank and world size are read when iteration starts (``loader.ranks.rank_and_world``), so the
    same object works before and after ``torch.distributed`` is initialised. A copy pickled while
    ``torch.distributed`` is initialised (a DataLoader starting spawned workers) carries the
    rank and world size with it, since the process group does not reach such a worker.
    ``transfer_batches > 1`` makes iteration yield, after a first lone batch, ``BatchGroup``s
    of that many consecutive batches (fewer DataLoader items, see ``loader.batch.grouped``);
    ``make_loader``'s ``ClosingDataLoader`` unpacks them, a plain ``DataLoader`` does not.
    Remote shards: ``retry`` (a ``RetryPolicy``) governs every request; ``cache_dir`` keeps
    them and their index files in a node-local cache of at most ``cache_limit`` bytes
    (``loader.cache``); ``net.totals()`` counts requests, retries and cache traffic over all
    processes (docs/architecture.md, section "Remote reads").
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str] | DatasetSource,
        *,
        batch_size: int = 256,
        image_size: int = 224,
        train: bool = True,
        decode: bool | str | Decoder = True,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        even: str = "pad",
        bad_samples: str = "skip",
        skip_budget: int = 100,
        latency_ms: float = 0.0,
        transfer_batches: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
        retry: RetryPolicy | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | None = None,
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
        check_non_negative("latency_ms", latency_ms)
        if rank is not None or world_size is not None:
            rank_and_world(rank, world_size)
        self.net = NetCounters()
        self.remote = RemoteOptions.build(
            retry=retry, cache_dir=cache_dir, cache_limit=cache_limit, counters=self.net
        )
        self.source = (
            source
            if isinstance(source, DatasetSource)
            else resolve_source(source, retry=self.remote.retry)
        )
        self.batch_size = batch_size
        self.decoder = make_decoder(decode, image_size, train)
        given = isinstance(decode, bool | str)
        self.image_size = image_size if given else self.decoder.image_size
        self.train = train
        self.decode = self.decoder.image_size > 0
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.even = even
        self.bad_samples = bad_samples
        self.skip_budget = skip_budget
        self.latency_s = latency_ms / 1000.0
        self.transfer_batches = transfer_batches
        self._rank, self._world = rank, world_size
        self._epoch = SharedEpoch()
        keep_open = 2 if cache_limit is not None else KEEP_OPEN  # open files are not evictable
        self._reuse = Reuse(self.latency_s, keep_open, self.remote)
        self._sizes = np.array([s.nsamples for s in self.source.shards], dtype=np.int64)
        self._resume: LoaderState | None = None
        self._progress: Progress | None = None
        self._current: int | None = None  # the epoch ``_progress`` records (main process)
        self._num_workers = 0
        self._iterated = False
        if self._world is not None and self._world > self.num_samples:
            raise ValueError(
                f"world_size={self._world} is larger than the number of samples "
                f"{self.num_samples} in {self.source.origin}: every rank needs one sample"
            )

    def __getstate__(self) -> dict[str, Any]:
        """The state to pickle, with the rank and world size pinned when ``torch.distributed``
        is initialised here (a spawned worker has no process group to ask)."""
        state = dict(self.__dict__)
        state["_progress"] = None
        if state["_rank"] is None and torch.distributed.is_available():
            if torch.distributed.is_initialized():
                state["_rank"], state["_world"] = rank_and_world()
        return state

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration (in every worker, persistent ones too) use ``epoch``.

        A state loaded for ``epoch`` still applies; one loaded for another epoch is ignored.
        """
        self._epoch.set(epoch)
        self._follow(epoch)

    @property
    def next_epoch(self) -> int:
        return self._epoch.peek()

    def epoch_plan(self, epoch: int, num_workers: int) -> list[WorkerPlan]:
        """This rank's worker plans for ``epoch``: what it will yield, pad and drop."""
        rank, world = rank_and_world(self._rank, self._world)
        return plan_rank(
            self._sizes,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world,
            num_workers=num_workers,
            batch_size=self.batch_size,
            even=self.even,
        )

    def batches_per_epoch(self, num_workers: int = 0) -> int:
        """Batches this rank yields per epoch (the same every epoch)."""
        return sum(p.num_batches for p in self.epoch_plan(0, num_workers))

    def __iter__(self) -> Iterator[Batch | ByteBatch | BatchGroup]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 0)
        if info is None:
            self._iterated = True
        epoch = self._epoch.begin(worker if info is not None else SharedEpoch.MAIN)
        rank, world = rank_and_world(self._rank, self._world)
        topology = self.topology(num_workers, world)
        taken, done, left_out = resume_point(self._resume, topology, epoch, rank)
        plans = plan_rank(
            self._sizes,
            seed=self.seed,
            epoch=epoch,
            rank=rank,
            world_size=world,
            num_workers=num_workers,
            batch_size=self.batch_size,
            even=self.even,
            taken=taken,
        )
        skip = 0
        if done is not None:
            counts = [p.num_batches for p in plans]
            worker = (worker + next_worker(counts, done, self.transfer_batches)) % len(plans)
            skip = done[worker]
        plan = plans[worker]
        if plan.drop:
            log.info(
                "even='drop': rank %d worker %d leaves out %d sample(s) in epoch %d",
                rank,
                worker,
                plan.drop,
                epoch,
            )
        key = worker_seed(self.seed, epoch, rank, worker, left_out)
        rng = np.random.default_rng(key)
        return grouped(self._batches(plan, rng, skip, key), self.transfer_batches, skip)

    def _builder(self) -> BatchBuilder | ByteBatchBuilder:
        """A batch builder for this worker, its buffers from this process's pools."""
        capacity = max(CAPACITY, IN_FLIGHT_ITEMS * self.transfer_batches)
        if getattr(self.decoder, "decodes_on_device", False):
            planner = cast(Planner, self.decoder)
            return ByteBatchBuilder(
                self.batch_size, planner, pools=lambda n: self._reuse.pool(n, capacity)
            )
        side = self.decoder.image_size
        pool = self._reuse.pool(self.batch_size * side * side * 3, capacity)
        return BatchBuilder(self.batch_size, side, self.decoder, pool=pool)

    def _batches(
        self, plan: WorkerPlan, rng: np.random.Generator, skip: int, key: list[int]
    ) -> Iterator[Batch | ByteBatch]:
        """The plan's batches from batch ``skip`` on. ``rng`` draws the shuffle order; batch
        ``j``'s crops come from ``default_rng(key + [j])``, so they do not depend on ``skip``."""
        builder = self._builder()
        ids = plan_ids(plan)
        order = emission_order(len(ids), self.shuffle_buffer if self.train else 0, rng)
        done = min(skip * self.batch_size, len(ids))
        segments: Sequence[Segment] = plan.segments
        if done:
            skipped = np.zeros(len(ids), dtype=bool)
            skipped[np.fromiter(islice(order, done), np.int64, done)] = True
            segments = kept_segments(plan, skipped)
        pads = list(plan.pad_ids)[skip * self.batch_size - done :]
        augment = self.decode and self.train
        index = skip
        draw = np.random.default_rng([*key, index]) if augment else rng
        id_list = ids.tolist()
        skipped_bad = 0
        fillers = 0
        last_good: int | None = None
        add, full = builder.add, self.batch_size
        classes = len(self.source.classes) or _NO_CLASS_COUNT
        for sample in reorder(self._samples(segments), (id_list[i] for i in order)):
            try:
                if not 0 <= sample.label < classes:
                    raise DecodeError(_label_problem(sample.label, classes))
                add(sample.data, sample.label, sample.gid, draw)
                last_good = sample.gid
            except DecodeError as exc:
                skipped_bad += 1
                self._bad_sample(sample, exc, skipped_bad)
                fillers += 1
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
                    f"every sample of this worker's range was bad ({skipped_bad} skipped): "
                    "nothing to fill the batch with"
                )
            pads = [last_good] * fillers + pads
        for gid in pads:
            pad = self._read_one(gid)
            builder.add(pad.data, pad.label, gid, draw, padded=True)
            if builder.full:
                yield builder.finish()
        if len(builder):
            yield builder.finish()

    def _samples(self, segments: Sequence[Segment]) -> Iterator[RawSample]:
        """The segments' samples; readers stay open for later epochs (``loader._reuse``)."""
        for i, seg in enumerate(segments):
            shard = self.source.shards[seg.shard]
            try:
                samples = self._reuse.reader(shard).read(seg.start, seg.stop)
                if i + 1 < len(segments):  # read-ahead: the next shard opens meanwhile
                    nxt = segments[i + 1]
                    self._reuse.prefetch(self.source.shards[nxt.shard], nxt.start, nxt.stop)
                yield from samples
            except BaseException:
                self._reuse.forget(shard)
                raise

    def _read_one(self, gid: int) -> RawSample:
        shard = self._shard_of(gid)
        reader = ShardReader(
            self.source.shards[shard], latency_s=self.latency_s, remote=self.remote
        )
        try:
            pos = gid - self.source.shards[shard].first_index
            sample = next(iter(reader.read(pos, pos + 1)))
            return sample._replace(data=bytes(sample.data))
        finally:
            reader.close()

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
        reader = ShardReader(shard, remote=self.remote)
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

    def locate(self, gid: int) -> str:
        """Where sample ``gid`` is, for messages: its shard, position there and id."""
        shard = self.source.shards[self._shard_of(gid)]
        return f"shard {shard.url} sample {gid - shard.first_index} (id {gid})"
