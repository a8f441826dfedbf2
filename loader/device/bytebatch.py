"""Byte batches: workers read and batch, the device decodes (docs/architecture.md,
"Device decode").

When the decoder decodes on the device (``decodes_on_device``), a worker builds a
``ByteBatchBuilder`` instead of a ``BatchBuilder``. Per sample it asks the decoder's worker half
(``plan``) for the crop box, the flip and whether the header sends the sample to the CPU, and
copies the compressed bytes once, straight into the batch's buffer. ``plan`` draws from the
worker's generator exactly what the CPU path's decoder draws for the same bytes
(``ImageDecoder.draw``), so for a given seed both paths crop the same boxes
(docs/architecture.md, section "Device decode").

``finish()`` hands over a ``ByteBatch``: that buffer plus one small int64 array of per-sample
columns. Between processes it travels like a decoded ``Batch`` (``loader.batch``): the byte
buffer as one shared-memory segment (a pooled one, lent by handle, inside a DataLoader worker),
the columns by value; no per-sample Python objects cross. The buffer is taken at a batch's
first sample, sized (a power of two, at least ``MIN_BUFFER``) to hold the previous batch; a
sample that does not fit moves the batch to one at least twice as large, and the old one goes
back to its pool unlent. Ownership: the buffer of the batch being built
belongs to the builder; once handed over it belongs to the receiver, and a pooled one goes back
to its worker's pool only when the receiver has dropped every reference to it
(``loader.worker.pools``).
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any, Final, NamedTuple, Protocol

import numpy as np
import torch
from torch._utils import ExceptionWrapper
from torch.utils.data import get_worker_info

from loader.crop import CropBox
from loader.worker.pools import (
    ImagePool,
    LentBufferError,
    is_received,
    lease_of,
    lend,
    receive_lent,
    uint8_view,
)

__all__ = ["ByteBatch", "ByteBatchBuilder", "CropPlan", "Planner", "sample_bytes"]

MIN_BUFFER: Final = 1 << 20
_COLUMNS: Final = 12  # label, id, padded, nbytes, start, stop, top, left, height, width, flip, cpu


class CropPlan(NamedTuple):
    """What a worker decides for one sample: the crop ``box`` in full-size source pixels, the
    horizontal ``flip``, and ``cpu``: decode this one on the CPU (the header says the device
    decoder cannot, e.g. CMYK, PNG, WebP or progressive)."""

    box: CropBox
    flip: bool
    cpu: bool


class Planner(Protocol):
    """The worker half of a device decoder: crop parameters from the bytes and the generator.

    ``plan`` draws from ``rng`` what the CPU decoder would for the same bytes and state; it
    raises ``loader.decode.DecodeError`` for bytes no decoder can read (the worker's bad-sample
    policy then applies, as on the CPU path).
    """

    @property
    def image_size(self) -> int: ...

    def plan(self, data: bytes | memoryview, rng: np.random.Generator) -> CropPlan: ...


class ByteBatch(NamedTuple):
    """One batch of compressed samples. Row ``i`` of every column describes sample ``i``.

    ``data`` uint8 ``[N]``: the samples' bytes back to back; ``spans`` int64 ``[B, 2]``: sample
    ``i`` is ``data[spans[i, 0]:spans[i, 1]]`` (a padding repeat shares its source's span);
    ``boxes`` int64 ``[B, 4]``: crop ``(top, left, height, width)`` in full-size source pixels;
    ``flips`` bool; ``cpu`` bool, true where the header routes the sample to the CPU decoder;
    ``labels``, ``ids``, ``padded``, ``nbytes`` as in ``loader.batch.Batch``.
    """

    data: torch.Tensor
    spans: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    cpu: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    padded: torch.Tensor
    nbytes: torch.Tensor


def sample_bytes(batch: ByteBatch, row: int) -> memoryview:
    """The compressed bytes of sample ``row`` (a view into ``batch.data``; no copy)."""
    start, stop = (int(v) for v in batch.spans[row])
    return batch.data[start:stop].numpy().data


def _from_packed(data: torch.Tensor, packed: np.ndarray) -> ByteBatch:
    cols = torch.from_numpy(packed)
    return ByteBatch(
        data,
        cols[4:6].T,
        cols[6:10].T,
        cols[10].bool(),
        cols[11].bool(),
        cols[0],
        cols[1],
        cols[2].bool(),
        cols[3],
    )


def _packed(batch: ByteBatch) -> np.ndarray | None:
    """The per-sample columns as one ``[12, B]`` int64 array; ``None`` when they are not CPU
    tensors of one length (such a batch travels field by field)."""
    n = len(batch.ids)
    shapes = {
        "spans": (n, 2),
        "boxes": (n, 4),
        "flips": (n,),
        "cpu": (n,),
        "labels": (n,),
        "ids": (n,),
        "padded": (n,),
        "nbytes": (n,),
    }
    for name, shape in shapes.items():
        column = getattr(batch, name)
        if not isinstance(column, torch.Tensor) or column.device.type != "cpu":
            return None
        if tuple(column.shape) != shape:
            return None
    packed = np.empty((_COLUMNS, n), dtype=np.int64)
    for row, column in enumerate((batch.labels, batch.ids, batch.padded, batch.nbytes)):
        packed[row] = column.numpy()
    packed[4:6] = batch.spans.numpy().T
    packed[6:10] = batch.boxes.numpy().T
    packed[10] = batch.flips.numpy()
    packed[11] = batch.cpu.numpy()
    return packed


def _reduce_for_transfer(batch: ByteBatch) -> tuple[Any, ...]:
    """How a ``ByteBatch`` travels between processes (``ForkingPickler``); see the module doc.
    A received batch passed on to a further process sends a copy of its bytes, so its buffer
    still goes back to its worker when dropped here."""
    data = batch.data
    if isinstance(data, torch.Tensor) and is_received(data):
        data = data.clone()
    packed = _packed(batch)
    if packed is None or not isinstance(data, torch.Tensor):
        return (ByteBatch, (data, *batch[1:]))
    lease = lease_of(data)
    if lease is not None:
        return (_unpack_lent, (lend(lease), data.numel(), packed))
    return (_from_packed, (data, packed))


ForkingPickler.register(ByteBatch, _reduce_for_transfer)


def _unpack_lent(handle: Any, n: int, packed: np.ndarray) -> ByteBatch | ExceptionWrapper:
    """The batch; if its buffer cannot be mapped, the error wrapped as the DataLoader wraps a
    worker's, so it reaches the training loop (as ``loader.batch`` does for images)."""
    try:
        return _from_packed(receive_lent(handle, (n,)), packed)
    except LentBufferError:
        return ExceptionWrapper(where="in the main process, receiving a byte batch")


class ByteBatchBuilder:
    """Collects compressed samples slot by slot; the same interface as ``BatchBuilder`` (``add``,
    ``repeat``, ``finish``, ``full``, ``len``). Not thread-safe: one builder per worker thread.

    ``pools(nbytes)`` gives the ``ImagePool`` of ``nbytes`` buffers to take a batch's byte
    buffer from (``None``: a fresh one); buffers are sized in powers of two from
    ``MIN_BUFFER``, so a worker keeps a few pools. ``shared_memory``: put the buffer in shared
    memory; ``None`` means "when built inside a DataLoader worker".
    """

    def __init__(
        self,
        batch_size: int,
        planner: Planner,
        *,
        shared_memory: bool | None = None,
        pools: Callable[[int], ImagePool | None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got batch_size={batch_size}")
        self.batch_size = batch_size
        self.planner = planner
        if shared_memory is None:
            shared_memory = get_worker_info() is not None
        self.shared_memory = shared_memory
        self._pools = pools
        self._next_size = MIN_BUFFER
        self._storage: torch.UntypedStorage | None = None
        self._pool: ImagePool | None = None
        self._data: torch.Tensor | None = None
        self._view = np.empty(0, dtype=np.uint8)
        self._used = 0
        self._rows: list[tuple[int, ...]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def __del__(self) -> None:
        """A builder dropped with a batch half built (an epoch abandoned) gives its pooled
        buffer back, unlent."""
        pool, storage = getattr(self, "_pool", None), getattr(self, "_storage", None)
        if pool is not None and storage is not None:
            pool.release(storage)

    @property
    def full(self) -> bool:
        """True when every slot is filled and ``finish()`` must be called before ``add()``."""
        return len(self._rows) == self.batch_size

    def _check_free(self) -> None:
        if self.full:
            raise ValueError(
                f"expected a batch with a free slot, got a full one of {self.batch_size}: "
                "call finish() first"
            )

    def add(
        self,
        data: bytes | memoryview,
        label: int,
        gid: int,
        rng: np.random.Generator,
        padded: bool = False,
    ) -> int:
        """Plan ``data``'s crop (drawing from ``rng``), stage its bytes in the next slot and
        record its label, id and padding flag; returns its byte count. If ``plan`` raises
        (``DecodeError``), the slot stays free and the batch is as it was."""
        self._check_free()
        box, flip, cpu = self.planner.plan(data, rng)
        raw = np.frombuffer(data, dtype=np.uint8)
        n = raw.size
        start, stop = self._used, self._used + n
        if stop > self._view.size:
            self._grow(stop)
        self._view[start:stop] = raw
        self._used = stop
        self._rows.append((label, gid, padded, n, start, stop, *box, flip, cpu))
        return n

    def repeat(self, slot: int) -> None:
        """Fill the next slot with filled slot ``slot`` again, marked as padding and recording
        0 source bytes; the bytes are not copied (both rows share one span)."""
        if not 0 <= slot < len(self._rows):
            raise ValueError(f"expected a filled slot in [0, {len(self._rows)}), got slot={slot}")
        self._check_free()
        label, gid, _, _, *rest = self._rows[slot]
        self._rows.append((label, gid, True, 0, *rest))

    def finish(self) -> ByteBatch:
        """Hand over the filled slots as a ``ByteBatch`` and start the next batch.

        Raises ``ValueError`` when no slot is filled: the loader never yields an empty batch.
        """
        if not self._rows:
            raise ValueError("expected at least one filled slot, got an empty batch")
        n = self._used
        data = (self._data if self._data is not None else self._grow(0))[:n]
        packed = np.array(self._rows, dtype=np.int64).T.copy()
        self._next_size = n
        self._rows, self._used = [], 0
        self._storage, self._pool, self._data = None, None, None
        self._view = np.empty(0, dtype=np.uint8)
        return _from_packed(data, packed)

    def _grow(self, needed: int) -> torch.Tensor:
        """Move the batch to a buffer of at least ``needed`` bytes (see the module doc); returns
        it as a uint8 tensor."""
        size = max(MIN_BUFFER, needed, self._next_size, 2 * self._view.size)
        size = 1 << max(size - 1, 0).bit_length()
        pool = self._pools(size) if self._pools is not None and self.shared_memory else None
        if pool is not None:
            storage = pool.acquire()
        elif self.shared_memory:
            storage = torch.UntypedStorage._new_shared(size)
        else:
            storage = torch.UntypedStorage(size)
        data = uint8_view(storage, (size,))
        view = data.numpy()
        view[: self._used] = self._view[: self._used]
        if self._pool is not None and self._storage is not None:
            self._pool.release(self._storage)
        self._storage, self._pool, self._data, self._view = storage, pool, data, view
        return data
