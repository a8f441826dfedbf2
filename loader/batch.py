"""Batches assembled in the worker, decoded into one array (docs/architecture.md, "Loader").

A ``BatchBuilder`` lives in one DataLoader worker. It preallocates one uint8 ``[B, S, S, 3]``
array, decodes sample ``i`` directly into slot ``i``, records each sample's label, id, padding
flag and byte count, and when the batch is done yields all of it as one ``Batch`` of tensors, so
the main process does no per-sample work.

Ownership invariant: the arrays of a batch belong to the builder until ``finish()`` returns them
and to the receiver afterwards. ``finish()`` never reuses them: the next ``add()`` takes other
arrays. That matters because the DataLoader sends a yielded tensor to the main process by
sharing its storage, not by copying it at yield time; a builder that wrote into a yielded buffer
would change a batch the trainer may still be reading. Shared image buffers come from an
``ImagePool`` (``loader.worker.pools``): one is written again only after the process that received
its batch has dropped every reference to it, which spares a fresh buffer's page faults (about
12 ms per ``[64, 224, 224, 3]`` batch here, an eighth of its decoding time).

Inside a DataLoader worker the image buffer is allocated in shared memory (``shared_memory``
left as ``None`` decides by ``get_worker_info()``), so pickling it through the worker's queue
passes a file descriptor instead of first copying the whole batch into a new shared segment:
for a ``[256, 224, 224, 3]`` batch that copy cost 70-150 ms per batch here, against 3 ms.
"""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np
import torch
from torch._utils import ExceptionWrapper
from torch.utils.data import get_worker_info

from loader.worker.pools import (
    ImagePool,
    LentBufferError,
    is_received,
    lease_of,
    lend,
    receive_lent,
    uint8_view,
)

if TYPE_CHECKING:
    from loader.decode import Decoder
    from loader.device.bytebatch import ByteBatch

__all__ = ["Batch", "BatchBuilder", "BatchGroup", "grouped", "reduce_for_transfer"]

_NO_PIXELS: Final = np.empty((0, 0, 3), dtype=np.uint8)


class Batch(NamedTuple):
    """One batch as the loader yields it. Row ``i`` of every field describes sample ``i``.

    ``images`` is uint8 ``[B, S, S, 3]`` RGB (``[B, 0, 0, 3]`` when nothing is decoded);
    ``labels`` int64 class indices; ``ids`` int64 global sample ids; ``padded`` bool, true for a
    repeated sample added only to even out rank batch counts; ``nbytes`` int64 source image bytes
    read for the sample (0 for a repeat made by ``BatchBuilder.repeat``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    padded: torch.Tensor
    nbytes: torch.Tensor


def _reduce_for_transfer(batch: Batch) -> tuple[Any, ...]:
    """How a ``Batch`` travels between processes (``ForkingPickler``: DataLoader queues,
    ``multiprocessing``); plain ``pickle`` and ``copy.deepcopy`` copy it field by field.

    Between DataLoader processes every CPU tensor travels as its own shared-memory segment whose
    file descriptor the receiver fetches over a socket (about 0.3 ms per tensor in the main
    process). Here the four per-sample columns go by value as one small ``[4, B]`` array, an
    image tensor with no pixels (``--decode none``) as its shape, and pooled images as the
    handle of their buffer (``loader.worker.pools``): no socket round trip at all. A received batch
    passed on to a further process sends a copy of its images, so its buffer still goes back
    to its worker when dropped here. The rebuilt batch is equal field by field; its columns are
    views of one int64 tensor (``padded`` a bool copy). Batches whose columns are not 1-D CPU
    tensors of one length travel field by field.
    """
    images = batch.images
    if isinstance(images, torch.Tensor) and is_received(images):
        images = images.clone()
    columns = (batch.labels, batch.ids, batch.padded, batch.nbytes)
    n = len(batch.labels)
    packable = all(
        isinstance(c, torch.Tensor) and c.device.type == "cpu" and c.shape == (n,) for c in columns
    )
    if not packable:
        return (Batch, (images, *columns))
    packed = np.empty((4, n), dtype=np.int64)
    for row, column in zip(packed, columns, strict=True):
        row[:] = column.numpy()
    lease = lease_of(images) if isinstance(images, torch.Tensor) else None
    if lease is not None:
        return (_unpack_lent, (lend(lease), tuple(images.shape), packed))
    if isinstance(images, torch.Tensor) and images.numel() == 0:
        return (_unpack_pixelless, (tuple(images.shape), packed))
    return (_unpack_batch, (images, packed))


ForkingPickler.register(Batch, _reduce_for_transfer)


def reduce_for_transfer(batch: Batch) -> tuple[Any, ...]:
    """``(rebuild, args)``: how ``batch`` travels between processes (``_reduce_for_transfer``),
    for batch types that carry a ``Batch`` and more columns (``loader.mix.batch``)."""
    return _reduce_for_transfer(batch)


class BatchGroup:
    """Several consecutive batches (``Batch`` or ``ByteBatch``) of one worker that travel to the
    main process as one item.

    Each DataLoader item costs the main process a fixed amount however small it is (a queue
    read, an unpickling, an index sent back to the worker): about 0.25 ms here, as much as
    reading 30 samples with decoding off. A worker that yields a ``BatchGroup`` of ``k``
    batches pays that once per ``k`` batches. ``ClosingDataLoader`` hands the batches on one
    by one, in order, so a training loop never sees a group. Pickles as its batches (each by
    ``Batch.__reduce__``).
    """

    __slots__ = ("batches",)

    def __init__(self, batches: tuple[Batch | ByteBatch, ...]) -> None:
        if not batches:
            raise ValueError("expected at least one batch in a BatchGroup, got none")
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __repr__(self) -> str:
        return f"BatchGroup({len(self.batches)} batches)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_regroup, (self.batches,))

    def pin_memory(self) -> BatchGroup:
        """The group with every tensor copied to pinned memory: the DataLoader's pinning thread
        calls this (``pin_memory=True``), as it pins a lone ``Batch`` field by field."""
        return BatchGroup(tuple(type(b)(*(t.pin_memory() for t in b)) for b in self.batches))


def grouped(
    batches: Iterator[Batch | ByteBatch], size: int, done: int = 0
) -> Iterator[Batch | ByteBatch | BatchGroup]:
    """``batches`` as they are for ``size == 1``; else the first batch alone, so the first batch
    of an epoch is not held back, then ``BatchGroup``s of ``size`` (the last one shorter). A
    group is yielded once its last batch is built, never before. ``done`` batches were yielded
    before (a resumed worker): the first group then ends where it would have ended."""
    if size < 1:
        raise ValueError(f"expected a group size >= 1, got size={size}")
    if size == 1:
        yield from batches
        return
    if not done:
        first = next(batches, None)
        if first is None:
            return
        yield first
    room = size - (done - 1) % size if done else size
    group: list[Batch | ByteBatch] = []
    for batch in batches:
        group.append(batch)
        if len(group) == room:
            yield BatchGroup(tuple(group))
            group, room = [], size
    if group:
        yield BatchGroup(tuple(group))


def _unpack_batch(images: torch.Tensor, packed: np.ndarray) -> Batch:
    columns = torch.from_numpy(packed)
    return Batch(images, columns[0], columns[1], columns[2].bool(), columns[3])


def _unpack_pixelless(shape: tuple[int, ...], packed: np.ndarray) -> Batch:
    return _unpack_batch(torch.empty(shape, dtype=torch.uint8), packed)


def _unpack_lent(
    handle: Any, shape: tuple[int, ...], packed: np.ndarray
) -> Batch | ExceptionWrapper:
    """The batch; if its buffer cannot be mapped, the error wrapped as the DataLoader wraps a
    worker's, so it is raised, with its message, in the training loop even when the unpickling
    happened in the DataLoader's pinning thread (which would otherwise die and leave only
    "Pin memory thread exited unexpectedly")."""
    try:
        return _unpack_batch(receive_lent(handle, shape), packed)
    except LentBufferError:
        return ExceptionWrapper(where="in the main process, receiving a batch")


def _regroup(batches: tuple[Batch | ExceptionWrapper, ...]) -> BatchGroup | ExceptionWrapper:
    """A received ``BatchGroup``, or the first of its batches' receiving errors."""
    for batch in batches:
        if isinstance(batch, ExceptionWrapper):
            return batch
    return BatchGroup(batches)  # type: ignore[arg-type]


class BatchBuilder:
    """Fills one batch slot by slot; not thread-safe (one builder per worker thread).

    ``image_size`` must equal ``decoder.image_size`` (0 for a decoder that writes no pixels,
    such as ``NoDecode``). Slots are filled in call order; ``finish()`` hands over the filled
    prefix and the next ``add()`` starts a new batch in other arrays. ``shared_memory``: take
    image buffers from shared memory; ``None`` means "when built inside a DataLoader worker".
    ``pool``: the ``ImagePool`` shared buffers come from; unused without ``shared_memory``. A
    receiver maps a pooled buffer from the worker's descriptor when the batch arrives, so the
    pool must outlive every batch in flight: keep one per process and size (``Reuse.pool``).
    ``None``: a fresh shared buffer for every batch, passed by PyTorch's own sharing.
    """

    def __init__(
        self,
        batch_size: int,
        image_size: int,
        decoder: Decoder,
        *,
        shared_memory: bool | None = None,
        pool: ImagePool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got batch_size={batch_size}")
        if image_size < 0:
            raise ValueError(f"expected image_size >= 0, got image_size={image_size}")
        if decoder.image_size != image_size:
            raise ValueError(
                f"expected a decoder writing {image_size}x{image_size} images, "
                f"got decoder={decoder!r} with image_size={decoder.image_size}"
            )
        self.batch_size = batch_size
        self.image_size = image_size
        self.decoder = decoder
        if shared_memory is None:
            shared_memory = get_worker_info() is not None
        self.shared_memory = shared_memory
        nbytes = batch_size * image_size * image_size * 3
        if pool is not None and pool.nbytes != nbytes:
            raise ValueError(
                f"expected a pool of {nbytes}-byte buffers, got pool.nbytes={pool.nbytes}"
            )
        self._pool = pool if shared_memory and nbytes else None
        self._n = 0
        self._arrays: _Arrays | None = None

    def __len__(self) -> int:
        return self._n

    @property
    def full(self) -> bool:
        """True when every slot is filled and ``finish()`` must be called before ``add()``."""
        return self._n == self.batch_size

    def _slots(self) -> _Arrays:
        if self.full:
            raise ValueError(
                f"expected a batch with a free slot, got a full one of {self.batch_size}: "
                "call finish() first"
            )
        if self._arrays is None:
            self._arrays = _Arrays(self.batch_size, self.image_size, self._pool, self.shared_memory)
        return self._arrays

    def add(
        self,
        data: bytes | memoryview,
        label: int,
        gid: int,
        rng: np.random.Generator,
        padded: bool = False,
    ) -> int:
        """Decode ``data`` into the next slot and record its label, id and padding flag.

        Returns the number of source bytes. If the decoder raises (``DecodeError``), the slot
        stays free and the batch is as it was, so the caller can apply its bad-sample policy
        and carry on.
        """
        arrays, i = self._arrays, self._n
        if arrays is None or i == self.batch_size:
            arrays = self._slots()
        nbytes = self.decoder(data, arrays.pixels[i] if self.image_size else _NO_PIXELS, rng)
        arrays.rows.append((label, gid, padded, nbytes))
        self._n = i + 1
        return nbytes

    def repeat(self, slot: int) -> None:
        """Fill the next slot with a copy of filled slot ``slot``, marked as padding.

        For evening out rank batch counts without reading or decoding the sample again; the copy
        records 0 source bytes. To pad with a sample from outside this batch, ``add(...,
        padded=True)`` it instead.
        """
        if not 0 <= slot < self._n:
            raise ValueError(f"expected a filled slot in [0, {self._n}), got slot={slot}")
        arrays = self._slots()
        i = self._n
        arrays.copy_row(slot, i)
        self._n = i + 1

    def finish(self) -> Batch:
        """Hand over the filled slots as a ``Batch`` and start the next batch in fresh arrays.

        A partial batch is a view of the first ``len(self)`` rows. Raises ``ValueError`` when
        no slot is filled: the loader never yields an empty batch.
        """
        if self._n == 0 or self._arrays is None:
            raise ValueError("expected at least one filled slot, got an empty batch")
        arrays, n = self._arrays, self._n
        self._arrays, self._n = None, 0
        return arrays.batch(n)


class _Arrays:
    """One batch's storage: the image tensor and its NumPy view, and the per-sample columns as
    rows of ``(label, id, padded, nbytes)`` that become one int64 array when handed over
    (appending a tuple costs a fifth of writing four NumPy scalars)."""

    def __init__(
        self, batch_size: int, image_size: int, pool: ImagePool | None, shared: bool
    ) -> None:
        shape = (batch_size, image_size, image_size, 3)
        nbytes = batch_size * image_size * image_size * 3
        if pool is not None and nbytes:
            self.images = uint8_view(pool.acquire(), shape)
        elif shared and nbytes:
            self.images = uint8_view(torch.UntypedStorage._new_shared(nbytes), shape)
        else:
            self.images = torch.empty(shape, dtype=torch.uint8)
        self.pixels = self.images.numpy()
        self.rows: list[tuple[int, int, bool, int]] = []

    def copy_row(self, src: int, dst: int) -> None:
        self.pixels[dst] = self.pixels[src]
        label, gid, _, _ = self.rows[src]
        self.rows.append((label, gid, True, 0))

    def batch(self, n: int) -> Batch:
        columns = torch.from_numpy(np.array(self.rows, dtype=np.int64).T.copy())
        images = self.images if n == len(self.images) else self.images[:n]
        return Batch(images, columns[0], columns[1], columns[2].bool(), columns[3])
