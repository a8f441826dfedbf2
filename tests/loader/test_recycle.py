"""Tests for loader/worker/pools.py: image buffers reused only after the receiver let go of them.

Real DataLoader workers build batches whose pixels all equal a per-batch value; the main
process holds some batches and drops others, and every held batch must still show its own
value at the end (a buffer written while held would show another's).
"""

from __future__ import annotations

import copy
import gc
import multiprocessing
import pickle
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import pytest
import torch
from torch._utils import ExceptionWrapper
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from loader.batch import Batch, BatchBuilder, BatchGroup
from loader.dataloader import ClosingDataLoader
from loader.worker import pools as _recycle
from loader.worker.pools import (
    _LENT_MAPS,
    CAPACITY,
    FREE,
    LENT,
    ImagePool,
    LentBufferError,
    forget_exited_lenders,
    is_received,
    lease_of,
    lend,
    receive_lent,
)

B, S = 3, 8
NBYTES = B * S * S * 3


class _Fill:
    """A decoder that paints the whole slot with the sample's first byte."""

    image_size = S

    def __call__(self, data: bytes | memoryview, out: np.ndarray, rng: np.random.Generator) -> int:
        out[...] = memoryview(data)[0]
        return len(data)


def value(worker: int, k: int) -> int:
    return (worker * 100 + k) % 251


class _Painted(IterableDataset[Batch]):
    """Worker w yields ``count`` full batches; batch k is painted ``value(w, k)``; its labels
    carry how many buffers the worker's pool has allocated so far."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pool: ImagePool | None = None  # made in the worker, kept while batches travel

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if self.pool is None:
            self.pool = ImagePool(NBYTES)
        pool = self.pool
        builder = BatchBuilder(B, S, _Fill(), pool=pool)
        rng = np.random.default_rng(0)
        for k in range(self.count):
            for _ in range(B):
                builder.add(bytes([value(worker, k)]), 0, worker * 1000 + k, rng)
            batch = builder.finish()
            batch.labels.fill_(pool.allocated)
            yield batch


def _check(batch: Batch) -> None:
    gid = int(batch.ids[0])
    expected = value(gid // 1000, gid % 1000)
    assert int(batch.images.min()) == int(batch.images.max()) == expected, gid


def test_dropped_batches_are_reused_and_held_ones_stay_intact() -> None:
    loader = DataLoader(_Painted(count=40), batch_size=None, num_workers=2, prefetch_factor=2)
    held: list[Batch] = []
    allocated = []
    for n, batch in enumerate(loader):
        _check(batch)
        allocated.append(int(batch.labels[0]))
        if n % 5 == 0:
            held.append(batch)
    assert len(allocated) == 80
    assert max(allocated) < 40  # most batches reused a buffer
    for batch in held:
        _check(batch)


def test_holding_every_batch_never_overwrites_one() -> None:
    count = CAPACITY + 4
    loader = DataLoader(_Painted(count=count), batch_size=None, num_workers=2)
    held = list(loader)
    assert len(held) == 2 * count
    assert max(int(b.labels[0]) for b in held) == count  # no buffer was free to reuse
    for batch in held:
        _check(batch)


def _lent_batch(pool: ImagePool, paint: int) -> Batch:
    builder = BatchBuilder(B, S, _Fill(), shared_memory=True, pool=pool)
    rng = np.random.default_rng(0)
    for i in range(B):
        builder.add(bytes([paint]), i, i, rng)
    return builder.finish()


def _send(batch: Batch) -> Batch:
    received: Batch = pickle.loads(ForkingPickler.dumps(batch))
    return received


def test_a_received_buffer_is_free_once_every_view_is_gone() -> None:
    pool = ImagePool(NBYTES)
    sent = _lent_batch(pool, 7)
    received = _send(sent)
    del sent
    assert isinstance(received, Batch) and received.labels.tolist() == [0, 1, 2]
    assert received.padded.dtype == torch.bool and int(received.images.max()) == 7
    view = received.images[1:]
    del received
    gc.collect()
    assert pool.free_count() == 0  # a view keeps the storage
    del view
    gc.collect()
    assert pool.free_count() == 1
    again = _lent_batch(pool, 9)
    assert pool.allocated == 1 and pool.free_count() == 0
    assert int(again.images.min()) == 9


def _report_values(conn: Any, payloads: list[bytes]) -> None:
    values = []
    for data in payloads:
        got = pickle.loads(data)
        images = got.images if isinstance(got, Batch) else got
        values.append((int(images.min()), int(images.max())))
    conn.send(values)


def test_a_received_batch_passed_on_sends_a_copy_and_is_still_released() -> None:
    pool = ImagePool(NBYTES)
    received = _send(_lent_batch(pool, 3))
    payloads = [
        bytes(ForkingPickler.dumps(received)),
        bytes(ForkingPickler.dumps(received.images[1:])),  # a tensor alone, not its Batch
    ]
    del received
    gc.collect()
    assert pool.free_count() == 1
    assert int(_lent_batch(pool, 4).images.max()) == 4 and pool.allocated == 1
    parent, child_end = multiprocessing.get_context("fork").Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=_report_values, args=(child_end, payloads)
    )
    child.start()
    assert parent.recv() == [(3, 3), (3, 3)]
    child.join()


def test_copies_are_by_value_in_the_worker_and_in_the_receiver() -> None:
    pool = ImagePool(NBYTES)
    sent = _lent_batch(pool, 3)
    for copy_ in (copy.deepcopy(sent), pickle.loads(pickle.dumps(sent))):
        assert int(copy_.images.max()) == 3 and not is_received(copy_.images)
        del copy_
    gc.collect()
    assert pool.free_count() == 0  # only the receiver of a lent batch releases it
    received = _send(sent)
    del sent
    kept = copy.deepcopy(received)
    del received
    gc.collect()
    assert pool.free_count() == 1
    _lent_batch(pool, 9)
    assert int(kept.images.min()) == int(kept.images.max()) == 3


def test_many_buffers_in_rotation_are_mapped_once_each(monkeypatch: pytest.MonkeyPatch) -> None:
    maps: list[int] = []
    real = _recycle._map_lent

    def counting(pid: int, fd: int, size: int) -> Any:
        maps.append(fd)
        return real(pid, fd, size)

    monkeypatch.setattr(_recycle, "_map_lent", counting)
    pools = [ImagePool(NBYTES) for _ in range(80)]
    for round_ in range(3):
        for k, pool in enumerate(pools):
            received = _send(_lent_batch(pool, (round_ + k) % 251))
            assert int(received.images.max()) == (round_ + k) % 251
            del received
    assert len(maps) == 80
    assert all(pool.allocated == 1 for pool in pools)


def _drop(batches: list[Batch]) -> None:
    batches.clear()
    gc.collect()


def test_a_forked_child_dropping_a_batch_does_not_release_it() -> None:
    pool = ImagePool(NBYTES)
    held = [_send(_lent_batch(pool, 5))]
    gc.collect()
    child = multiprocessing.get_context("fork").Process(target=_drop, args=(held,))
    child.start()
    child.join()
    assert child.exitcode == 0 and pool.free_count() == 0
    _drop(held)
    assert pool.free_count() == 1


def test_pool_bounds_and_arguments() -> None:
    pool = ImagePool(10, capacity=1)
    first, second = pool.acquire(), pool.acquire()
    assert first.nbytes() > 10 and second.nbytes() == 10  # past capacity: unpooled
    assert pool.allocated == 2 and pool.free_count() == 0
    assert (LENT, FREE) == (0, 1)
    with pytest.raises(ValueError, match="nbytes >= 1"):
        ImagePool(0)
    with pytest.raises(ValueError, match="pool of 576-byte buffers"):
        BatchBuilder(B, S, _Fill(), pool=ImagePool(10))
    unshared = BatchBuilder(B, S, _Fill(), shared_memory=False, pool=ImagePool(NBYTES))
    unshared.add(b"\x01", 0, 0, np.random.default_rng(0))
    assert not unshared.finish().images.is_shared()


def test_a_reused_descriptor_number_is_never_shown_stale() -> None:
    first_pool = ImagePool(NBYTES)
    sent = _lent_batch(first_pool, 11)
    fd = lend(lease_of(sent.images))[1]
    first = _send(sent)
    assert int(first.images.max()) == 11
    del sent
    del first, first_pool
    gc.collect()
    second_pool = ImagePool(NBYTES)
    sent = _lent_batch(second_pool, 22)
    assert lend(lease_of(sent.images))[1] == fd, "expected the freed descriptor number reused"
    received = _send(sent)
    assert int(received.images.min()) == int(received.images.max()) == 22


def test_a_handle_with_a_foreign_token_is_refused() -> None:
    pool = ImagePool(NBYTES)
    sent = _lent_batch(pool, 1)
    pid, fd, size, flag_offset, token = lend(lease_of(sent.images))
    forged = (pid, fd, size, flag_offset, bytes(8) if token != bytes(8) else b"\x01" * 8)
    with pytest.raises(LentBufferError, match=f"lent by process {pid}"):
        receive_lent(forged, (B, S, S, 3))


def _lend_and_exit(conn: Any) -> None:
    pool = ImagePool(NBYTES)
    batch = _lent_batch(pool, 5)
    conn.send(lend(lease_of(batch.images)))
    conn.recv()


def test_a_buffer_of_an_exited_worker_is_named() -> None:
    parent, child_end = multiprocessing.get_context("fork").Pipe()
    child = multiprocessing.get_context("fork").Process(target=_lend_and_exit, args=(child_end,))
    child.start()
    handle = parent.recv()
    alive = receive_lent(handle, (B, S, S, 3))
    assert int(alive.max()) == 5
    parent.send("exit")
    child.join()
    forget_exited_lenders()
    assert (child.pid, handle[1]) not in _LENT_MAPS._maps
    assert int(alive.max()) == 5  # a batch still held keeps its own map
    with pytest.raises(LentBufferError, match=f"lent by process {child.pid}"):
        receive_lent(handle, (B, S, S, 3))


def _lend_group_and_exit(conn: Any) -> None:
    pool = ImagePool(NBYTES)
    group = BatchGroup((_lent_batch(pool, 6), _lent_batch(pool, 7)))
    conn.send_bytes(bytes(ForkingPickler.dumps(group)))
    conn.recv()


def test_a_batch_that_cannot_be_received_arrives_as_the_wrapped_error() -> None:
    """What the DataLoader re-raises in the training loop, even from its pinning thread."""
    parent, child_end = multiprocessing.get_context("fork").Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=_lend_group_and_exit, args=(child_end,)
    )
    child.start()
    data = parent.recv_bytes()
    parent.send("exit")
    child.join()
    got = pickle.loads(data)
    assert isinstance(got, ExceptionWrapper)
    with pytest.raises(LentBufferError, match=f"lent by process {child.pid}"):
        got.reraise()


def test_maps_of_a_deleted_loaders_workers_are_dropped() -> None:
    loader = ClosingDataLoader(
        _Painted(count=10), batch_size=None, num_workers=2, persistent_workers=True
    )
    for n, batch in enumerate(loader):
        _check(batch)
        if n == 3:
            break
    pids = {w.pid for w in loader._iterator._workers}  # type: ignore[union-attr]
    del batch
    assert pids & {pid for pid, _ in _LENT_MAPS._maps}
    del loader
    gc.collect()
    assert not pids & {pid for pid, _ in _LENT_MAPS._maps}
