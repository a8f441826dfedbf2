"""Image buffers a DataLoader worker reuses once the receiving process has let go of them.

A fresh shared-memory batch buffer is expensive where page faults are: for a ``[64, 224, 224,
3]`` batch, creating it, faulting its 2,352 pages in while decoding and freeing it cost about
12 ms here, an eighth of the time it takes to decode the 64 images. An ``ImagePool`` keeps the
buffers instead, and lends each out again once the receiver is done with it.

Protocol. Each pooled buffer is one shared-memory storage: the image bytes, then one page whose
first byte is the buffer's flag (``LENT`` or ``FREE``). The worker sets ``LENT`` when it takes a
buffer for a batch. The batch travels as the buffer's file descriptor (``lend``); the receiving
process maps the storage, maps the flag page separately, and registers a finalizer on its
storage that writes ``FREE`` to the flag when the last reference to that storage in that
process is gone: every tensor and view of it. Only then does the worker's ``acquire`` hand the
buffer out again. A receiver that passes the batch on (pickles the ``Batch`` again) gives up the
release: that buffer stays ``LENT`` for good and the pool allocates another. The finalizer only
ever writes in the process that registered it (not in a forked child).

Limits: a tensor of a received batch handed to a third process directly (not inside its
``Batch``, for example ``queue.put(batch.images)`` on a ``torch.multiprocessing`` queue) is not
noticed; copy it (``.clone()``) first. When every buffer is lent (the receiver holds more than
``capacity`` batches of this worker) ``acquire`` allocates an unpooled buffer, as before.
"""

from __future__ import annotations

import mmap
import os
import weakref
from multiprocessing import reduction
from typing import Any, Final

import numpy as np
import torch

__all__ = [
    "FREE",
    "LENT",
    "ImagePool",
    "lease_of",
    "lend",
    "receive_lent",
    "release_handle",
    "uint8_view",
]

LENT: Final = 0
FREE: Final = 1
PAGE: Final = mmap.PAGESIZE
CAPACITY: Final = 16
_LEASE: Final = "_shardfeed_lease"
_RELEASE: Final = "_shardfeed_release"


class _Lease:
    """What a pooled storage carries: its descriptor, its size and where its flag is."""

    def __init__(self, fd: int, size: int, flag_offset: int) -> None:
        self.fd, self.size, self.flag_offset = fd, size, flag_offset
        self.pid = os.getpid()


class ImagePool:
    """Shared-memory storages of ``nbytes`` (plus a flag page) for one worker's batches.

    Not thread-safe: one pool per builder or per worker process. ``capacity`` bounds the number
    of pooled buffers; past it ``acquire`` returns unpooled storages.
    """

    def __init__(self, nbytes: int, capacity: int = CAPACITY) -> None:
        if nbytes < 1 or capacity < 0:
            raise ValueError(
                f"expected nbytes >= 1 and capacity >= 0, got nbytes={nbytes} capacity={capacity}"
            )
        self.nbytes = nbytes
        self.capacity = capacity
        self._flag_offset = -(-nbytes // PAGE) * PAGE
        self._buffers: list[tuple[torch.UntypedStorage, np.ndarray]] = []
        self.allocated = 0

    def acquire(self) -> torch.UntypedStorage:
        """A storage of at least ``nbytes`` that no receiver holds; marked ``LENT``."""
        for storage, flag in self._buffers:
            if flag[0] == FREE:
                flag[0] = LENT
                return storage
        self.allocated += 1
        if len(self._buffers) >= self.capacity or not reduction.HAVE_SEND_HANDLE:
            return torch.UntypedStorage._new_shared(self.nbytes)
        storage = torch.UntypedStorage._new_shared(self._flag_offset + PAGE)
        fd, size = storage._share_fd_cpu_()
        setattr(storage, _LEASE, _Lease(fd, size, self._flag_offset))
        flag = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()[self._flag_offset :][:1]
        flag[0] = LENT
        self._buffers.append((storage, flag))
        return storage

    def free_count(self) -> int:
        """How many pooled buffers are ``FREE`` now."""
        return sum(int(flag[0] == FREE) for _, flag in self._buffers)


def lease_of(images: torch.Tensor) -> Any:
    """The lease of a pooled buffer this process owns that ``images`` starts at, else ``None``."""
    lease = getattr(images.untyped_storage(), _LEASE, None)
    if lease is None or lease.pid != os.getpid():
        return None
    if images.storage_offset() != 0 or not images.is_contiguous():
        return None
    return lease


def release_handle(images: torch.Tensor) -> None:
    """Give up the release of a received buffer (it is being passed on): it stays ``LENT``."""
    finalizer = getattr(images.untyped_storage(), _RELEASE, None)
    if finalizer is not None:
        finalizer.detach()


def lend(lease: Any) -> tuple[Any, int, int]:
    """The picklable handle of a pooled buffer: a duplicated descriptor, size, flag offset."""
    return reduction.DupFd(lease.fd), lease.size, lease.flag_offset


def _release(flag: mmap.mmap, pid: int) -> None:
    if os.getpid() == pid:
        flag[0] = FREE
    flag.close()


def receive_lent(handle: tuple[Any, int, int], shape: tuple[int, ...]) -> torch.Tensor:
    """Map a lent buffer in the receiving process as a uint8 tensor of ``shape``; the buffer is
    released (its flag set ``FREE``) when this process's last reference to the storage goes."""
    dup_fd, size, flag_offset = handle
    fd = dup_fd.detach()
    try:
        storage = torch.UntypedStorage._new_shared_fd_cpu(fd, size)  # type: ignore[attr-defined]
        flag = mmap.mmap(fd, PAGE, offset=flag_offset)
    finally:
        os.close(fd)
    setattr(storage, _RELEASE, weakref.finalize(storage, _release, flag, os.getpid()))
    return uint8_view(storage, shape)


def uint8_view(storage: torch.UntypedStorage, shape: tuple[int, ...]) -> torch.Tensor:
    """A C-contiguous uint8 tensor of ``shape`` over the start of ``storage``."""
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape, strides)
