"""``ShardDataset``: every worker of every rank reads a disjoint, balanced part of the shards.

Each worker computes its own ``WorkerPlan`` (``loader.plan.partition``) from the manifest, the seed,
the epoch, its rank and its worker index: no communication, no locks. It reads its segments
sequentially (seeking into its first shard through the sidecar index), passes samples through a
bounded shuffle buffer, decodes each straight into a preallocated batch array and yields whole
``Batch`` objects, so the main process does no per-sample work.

Resume (docs/architecture.md, section "Resume"): ``state_dict()`` says what the training loop
received (``record`` is called per batch it receives; ``make_loader``'s loader does that),
``load_state_dict()`` makes the next iteration deliver the rest of that epoch, for any topology
(``loader.resume.state``). The in-worker shuffle is an order drawn over the plan before reading
(``loader.plan.shuffle``), and crops are drawn per batch from a generator seeded by the batch's
index, so a resumed worker skips its first batches unread and yields the rest unchanged.

Bad samples (undecodable bytes, no label): with ``bad_samples="skip"`` the sample is not
delivered, its batch slot is filled with a copy of another sample of the same batch marked
``padded`` (so every rank still yields the planned number of batches), and a warning names the
shard, member and offset; more than ``skip_budget`` skips in one worker's epoch raise (the
policy and its unit: ``loader.badsamples``). With ``"raise"`` the first one raises
``BadSampleError``. Worker exceptions reach the main process
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
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from loader._checks import check_int, check_non_negative
from loader.badsamples import BadSamplePolicy
from loader.batch import Batch, BatchGroup, grouped
from loader.decode import Decoder, ImageDecoder, NoDecode
from loader.device.bytebatch import ByteBatch
from loader.device.decoder import DeviceDecoder
from loader.plan.epoch import SharedEpoch
from loader.plan.partition import EVEN_POLICIES, WorkerPlan, plan_rank
from loader.plan.ranks import rank_and_world
from loader.plan.shuffle import worker_seed
from loader.remote.netstats import NetCounters
from loader.remote.options import RemoteOptions
from loader.remote.redact import redact
from loader.remote.retry import RetryPolicy
from loader.resume.keeper import ResumeKeeper
from loader.resume.state import Topology, next_worker, resume_point
from loader.sources import DatasetSource, resolve_source
from loader.transforms.sample import SampleTransform, check_sample_transform
from loader.worker.reuse import KEEP_OPEN, Reuse
from loader.worker.stream import WorkerStream

__all__ = ["ShardDataset", "make_decoder"]

log = logging.getLogger("shardfeed.loader")
DECODE_CHOICES = ("opencv", "none", "device")


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


class ShardDataset(IterableDataset[Batch | ByteBatch | BatchGroup]):
    """Streams ``Batch`` objects (uint8 ``[B, H, W, 3]`` images, labels, global ids, padded),
    or ``ByteBatch``es with a decoder that decodes on the device.

    ``source``: a manifest path or URL, a shard list or a brace pattern (``loader.sources``).
    ``image_size=0`` or ``decode=False`` skips decoding (benchmarks of the pipeline itself).
    ``decode``: see the module doc; a ``Decoder`` object brings its own ``image_size`` (the
    argument is then not used) and crop mode, while ``train`` still turns shuffling on.
    Rank and world size are read when iteration starts (``loader.plan.ranks.rank_and_world``),
    so the same object works before and after ``torch.distributed`` is initialised. A copy
    pickled while
    ``torch.distributed`` is initialised (a DataLoader starting spawned workers) carries the
    rank and world size with it, since the process group does not reach such a worker.
    ``transfer_batches > 1`` makes iteration yield, after a first lone batch, ``BatchGroup``s
    of that many consecutive batches (fewer DataLoader items, see ``loader.batch.grouped``);
    ``make_loader``'s ``ClosingDataLoader`` unpacks them, a plain ``DataLoader`` does not.
    Remote shards: ``retry`` (a ``RetryPolicy``) governs every request; ``cache_dir`` keeps
    them and their index files in a node-local cache of at most ``cache_limit`` bytes
    (``loader.remote.cache``); ``net.totals()`` counts requests, retries and cache traffic over all
    processes (docs/architecture.md, section "Remote reads").
    ``transform``: a per-sample transform run in the workers on each decoded crop, seeded from
    (seed, epoch, sample id); ``images`` are then the stack of its outputs. ``FullImage(fn)``
    gives it the whole decoded image instead of the crop (``loader.transforms``;
    docs/architecture.md, "Transforms").
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
        transform: SampleTransform | None = None,
    ) -> None:
        check_int("batch_size", batch_size, 1)
        check_int("transfer_batches", transfer_batches, 1)
        check_int("image_size", image_size, 0)
        check_int("seed", seed, 0)
        check_int("shuffle_buffer", shuffle_buffer, 0)
        if even not in EVEN_POLICIES:
            raise ValueError(f"expected even in {EVEN_POLICIES}, got even={even!r}")
        self.bad_sample_policy = BadSamplePolicy(bad_samples, skip_budget)
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
        check_sample_transform(transform, self.decoder)
        self.transform = transform
        given = isinstance(decode, bool | str)
        self.image_size = image_size if given else self.decoder.image_size
        self.train = train
        self.decode = self.decoder.image_size > 0
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.even = even
        self.latency_s = latency_ms / 1000.0
        self.transfer_batches = transfer_batches
        self._rank, self._world = rank, world_size
        self._epoch = SharedEpoch()
        keep_open = 2 if cache_limit is not None else KEEP_OPEN  # open files are not evictable
        self._reuse = Reuse(self.latency_s, keep_open, self.remote)
        self._sizes = np.array([s.nsamples for s in self.source.shards], dtype=np.int64)
        self.resume = ResumeKeeper(
            self.source,
            self._sizes,
            seed=seed,
            epoch=self._epoch,
            batch_size=batch_size,
            even=even,
            shuffle_size=shuffle_buffer if train else 0,
            rank=rank,
            world_size=world_size,
        )
        if self._world is not None and self._world > self.num_samples:
            raise ValueError(
                f"world_size={self._world} is larger than the number of samples "
                f"{self.num_samples} in {redact(self.source.origin)}: every rank needs one sample"
            )

    def __getstate__(self) -> dict[str, Any]:
        """The state to pickle, with the rank and world size pinned when ``torch.distributed``
        is initialised here (a spawned worker has no process group to ask)."""
        state = dict(self.__dict__)
        if state["_rank"] is None and torch.distributed.is_available():
            if torch.distributed.is_initialized():
                state["_rank"], state["_world"] = rank_and_world()
        return state

    @property
    def bad_samples(self) -> str:
        """``"skip"`` or ``"raise"`` (``loader.badsamples``)."""
        return self.bad_sample_policy.policy

    @property
    def skip_budget(self) -> int:
        """Bad samples skipped per epoch per process before raising (``loader.badsamples``)."""
        return self.bad_sample_policy.budget

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration (in every worker, persistent ones too) use ``epoch``.

        A state loaded for ``epoch`` still applies; one loaded for another epoch is ignored.
        """
        self._epoch.set(epoch)
        self.resume.follow(epoch)

    @property
    def num_samples(self) -> int:
        return self.source.num_samples

    @property
    def fingerprint(self) -> str:
        """The dataset's fingerprint (``loader.resume.state.fingerprint``)."""
        return self.resume.fingerprint

    def topology(self, num_workers: int, world_size: int | None = None) -> Topology:
        """The topology this dataset iterates with ``num_workers`` DataLoader workers."""
        return self.resume.topology(num_workers, world_size)

    def begin_epoch(self, num_workers: int) -> None:
        """Called by the main process as a DataLoader over this dataset starts an epoch."""
        self.resume.begin_epoch(num_workers)

    def end_epoch(self) -> None:
        """Called by the main process when the loop has received the epoch's last batch."""
        self.resume.end_epoch()

    def record(self, batch: Batch | ByteBatch, num_workers: int | None = None) -> None:
        """Count ``batch`` as received by the training loop. ``make_loader``'s loader calls it
        for every batch it hands over; with a plain ``DataLoader`` call it for every batch your
        loop takes (with the loader's ``num_workers``) and ``set_epoch`` before every epoch."""
        self.resume.record(batch.ids, batch.padded, num_workers)

    def state_dict(self, num_workers: int | None = None) -> dict[str, Any]:
        """What the training loop has received this epoch (``ResumeKeeper.state_dict``)."""
        return self.resume.state_dict(num_workers)

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Resume from ``state`` or every old rank's states (``ResumeKeeper.load_state_dict``)."""
        self.resume.load_state_dict(state)

    @property
    def next_epoch(self) -> int:
        return self._epoch.peek()

    def epoch_plan(
        self, epoch: int, num_workers: int, taken: np.ndarray | None = None
    ) -> list[WorkerPlan]:
        """This rank's worker plans for ``epoch``: what it will yield, pad and drop (with
        ``taken``, the ids a stopped run already consumed, only the rest)."""
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
            taken=taken,
        )

    def _resumed_plan(
        self, epoch: int, num_workers: int
    ) -> tuple[list[WorkerPlan], list[int] | None, int, int]:
        """This rank's plans for ``epoch`` from the loaded state's resume point (a fresh epoch
        without one), with the batches each worker already handed over, the count of samples
        left out and the rank (``loader.resume.state.resume_point``)."""
        rank, world = rank_and_world(self._rank, self._world)
        topology = self.resume.topology(num_workers, world)
        taken, done, left_out = resume_point(self.resume.loaded, topology, epoch, rank)
        return self.epoch_plan(epoch, num_workers, taken), done, left_out, rank

    def batches_per_epoch(self, num_workers: int = 0) -> int:
        """Batches this rank yields per epoch (the same every epoch)."""
        return sum(p.num_batches for p in self.epoch_plan(0, num_workers))

    def __iter__(self) -> Iterator[Batch | ByteBatch | BatchGroup]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 0)
        if info is None:
            self.resume.iterated = True
        epoch = self._epoch.begin(worker if info is not None else SharedEpoch.MAIN)
        plans, done, left_out, rank = self._resumed_plan(epoch, num_workers)
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
        stream = self._worker_stream(epoch)
        return grouped(stream.batches(plan, rng, skip, key), self.transfer_batches, skip)

    def _worker_stream(self, epoch: int) -> WorkerStream:
        """The batch stream of this process for ``epoch`` (a mix streams its own:
        ``loader.mix.dataset``)."""
        return WorkerStream(self, self._reuse, epoch)

    def batches_left(self, num_workers: int = 0) -> int:
        """Batches this rank yields in the next iteration with ``num_workers`` workers: a whole
        epoch's, except after ``load_state_dict`` of a state saved mid-epoch, until that epoch
        begins: the batches of the rest of it."""
        if self.resume.under_way or self.resume.loaded is None:
            return self.batches_per_epoch(num_workers)
        plans, done, _, _ = self._resumed_plan(self._epoch.peek(), num_workers)
        return sum(p.num_batches for p in plans) - sum(done or ())

    def __len__(self) -> int:
        """``batches_left`` with the workers of the loader that last iterated this dataset."""
        return self.batches_left(self.resume.num_workers)

    def locate(self, gid: int) -> str:
        """Where sample ``gid`` is, for messages: its shard, position there and id."""
        shard = self.source.shards[self.source.shard_of(gid)]
        return f"shard {redact(shard.url)} sample {gid - shard.first_index} (id {gid})"
