"""Tests for loader/batch.py: batch assembly in the worker, padding, buffer ownership."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from loader.batch import Batch, BatchBuilder, BatchGroup, grouped
from loader.decode import DecodeError, NoDecode, eval_transform, train_transform

SIZE = 16


def jpeg(seed: int, height: int = 24, width: int = 32) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def decoded(data: bytes) -> np.ndarray:
    out = np.empty((SIZE, SIZE, 3), np.uint8)
    eval_transform(SIZE)(data, out, np.random.default_rng(0))
    return out


def builder(batch_size: int = 4, **kwargs: bool) -> BatchBuilder:
    return BatchBuilder(batch_size, SIZE, eval_transform(SIZE), **kwargs)


def test_batch_fields_in_order() -> None:
    assert Batch._fields == ("images", "labels", "ids", "padded", "nbytes")


def test_full_batch_shapes_dtypes_and_contents() -> None:
    samples = [jpeg(i) for i in range(4)]
    b = builder()
    rng = np.random.default_rng(0)
    for i, data in enumerate(samples):
        assert not b.full and len(b) == i
        assert b.add(data, label=10 + i, gid=100 + i, rng=rng) == len(data)
    assert b.full and len(b) == 4
    batch = b.finish()
    assert isinstance(batch, Batch)
    assert batch.images.shape == (4, SIZE, SIZE, 3) and batch.images.dtype == torch.uint8
    assert batch.images.is_contiguous()
    assert batch.labels.dtype == batch.ids.dtype == batch.nbytes.dtype == torch.int64
    assert batch.padded.dtype == torch.bool
    assert batch.labels.tolist() == [10, 11, 12, 13]
    assert batch.ids.tolist() == [100, 101, 102, 103]
    assert batch.padded.tolist() == [False] * 4
    assert batch.nbytes.tolist() == [len(d) for d in samples]
    for i, data in enumerate(samples):
        assert np.array_equal(batch.images[i].numpy(), decoded(data))
    assert len(b) == 0 and not b.full


def test_partial_batch_is_the_filled_prefix() -> None:
    b = builder(batch_size=8)
    rng = np.random.default_rng(0)
    b.add(jpeg(0), 1, 7, rng)
    b.add(jpeg(1), 2, 8, rng, padded=True)
    batch = b.finish()
    assert batch.images.shape == (2, SIZE, SIZE, 3)
    assert [len(t) for t in batch[1:]] == [2, 2, 2, 2]
    assert batch.padded.tolist() == [False, True]
    assert np.array_equal(batch.images[1].numpy(), decoded(jpeg(1)))


def test_train_decoder_draws_from_the_given_rng() -> None:
    data = jpeg(3, 60, 80)
    b = BatchBuilder(3, SIZE, train_transform(SIZE))
    for _ in range(3):
        b.add(data, 0, 0, np.random.default_rng(42))
    images = b.finish().images
    assert torch.equal(images[0], images[1]) and torch.equal(images[1], images[2])


def test_finish_never_reuses_a_handed_over_buffer() -> None:
    b = builder(batch_size=2)
    rng = np.random.default_rng(0)
    b.add(jpeg(0), 0, 0, rng)
    b.add(jpeg(1), 1, 1, rng)
    first = b.finish()
    kept = first.images.clone(), first.labels.clone(), first.ids.clone()
    b.add(jpeg(2), 2, 2, rng)
    b.add(jpeg(3), 3, 3, rng)
    second = b.finish()
    for old, new in zip(first, second, strict=True):
        assert old.untyped_storage().data_ptr() != new.untyped_storage().data_ptr()
    assert torch.equal(first.images, kept[0])
    assert torch.equal(first.labels, kept[1]) and torch.equal(first.ids, kept[2])
    assert not torch.equal(first.images, second.images)


def test_repeat_pads_with_a_copy_of_a_filled_slot() -> None:
    b = builder(batch_size=4)
    rng = np.random.default_rng(0)
    b.add(jpeg(0), 5, 50, rng)
    b.add(jpeg(1), 6, 60, rng)
    b.repeat(0)
    batch = b.finish()
    assert batch.labels.tolist() == [5, 6, 5]
    assert batch.ids.tolist() == [50, 60, 50]
    assert batch.padded.tolist() == [False, False, True]
    assert batch.nbytes.tolist()[2] == 0 and batch.nbytes.tolist()[0] > 0
    assert torch.equal(batch.images[2], batch.images[0])


@pytest.mark.parametrize("slot", [-1, 1, 2, 10])
def test_repeat_of_an_unfilled_slot_is_rejected(slot: int) -> None:
    b = builder()
    b.add(jpeg(0), 0, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"filled slot in \[0, 1\)"):
        b.repeat(slot)
    assert len(b) == 1


def test_repeat_on_an_empty_builder_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"filled slot in \[0, 0\)"):
        builder().repeat(0)


def test_full_builder_refuses_more_until_finished() -> None:
    b = builder(batch_size=1)
    rng = np.random.default_rng(0)
    b.add(jpeg(0), 0, 0, rng)
    with pytest.raises(ValueError, match="call finish"):
        b.add(jpeg(1), 1, 1, rng)
    with pytest.raises(ValueError, match="call finish"):
        b.repeat(0)
    assert b.finish().ids.tolist() == [0]


def test_finish_on_empty_builder_is_rejected() -> None:
    b = builder()
    with pytest.raises(ValueError, match="empty batch"):
        b.finish()
    b.add(jpeg(0), 0, 0, np.random.default_rng(0))
    b.finish()
    with pytest.raises(ValueError, match="empty batch"):
        b.finish()


def test_decode_error_leaves_the_slot_free() -> None:
    b = builder(batch_size=2)
    rng = np.random.default_rng(0)
    b.add(jpeg(0), 0, 0, rng)
    with pytest.raises(DecodeError):
        b.add(b"broken", 1, 1, rng)
    assert len(b) == 1
    b.add(jpeg(2), 2, 2, rng)
    batch = b.finish()
    assert batch.ids.tolist() == [0, 2]
    assert np.array_equal(batch.images[1].numpy(), decoded(jpeg(2)))


def test_no_decode_batches_carry_bytes_but_no_pixels() -> None:
    b = BatchBuilder(3, 0, NoDecode())
    rng = np.random.default_rng(0)
    sizes = [b.add(jpeg(i, 8 + i, 8), i, i, rng) for i in range(3)]
    batch = b.finish()
    assert batch.images.shape == (3, 0, 0, 3) and batch.images.dtype == torch.uint8
    assert batch.nbytes.tolist() == sizes and all(s > 0 for s in sizes)


@pytest.mark.parametrize(
    "batch_size, image_size, decoder, match",
    [
        (0, SIZE, eval_transform(SIZE), "batch_size >= 1"),
        (-2, SIZE, eval_transform(SIZE), "batch_size >= 1"),
        (4, -1, NoDecode(), "image_size >= 0"),
        (4, 32, eval_transform(SIZE), "writing 32x32 images"),
        (4, 0, eval_transform(SIZE), "writing 0x0 images"),
        (4, SIZE, NoDecode(), "image_size=0"),
    ],
)
def test_bad_builder_settings_are_rejected(
    batch_size: int, image_size: int, decoder: NoDecode, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        BatchBuilder(batch_size, image_size, decoder)


def test_shared_memory_choice() -> None:
    rng = np.random.default_rng(0)
    for shared, expected in ((None, False), (True, True), (False, False)):
        b = BatchBuilder(2, SIZE, eval_transform(SIZE), shared_memory=shared)
        b.add(jpeg(0), 0, 0, rng)
        assert b.finish().images.is_shared() is expected


class _Batches(IterableDataset):
    """Each worker builds batches of its own samples (worker w: seeds w*100 + k)."""

    def __init__(self, per_worker: int, batch_size: int) -> None:
        self.per_worker = per_worker
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[tuple[Batch, bool]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        b = BatchBuilder(self.batch_size, SIZE, eval_transform(SIZE))
        rng = np.random.default_rng(worker)
        for k in range(self.per_worker):
            seed = worker * 100 + k
            b.add(jpeg(seed), label=k, gid=seed, rng=rng)
            if b.full:
                yield b.finish(), b.shared_memory
        if len(b):
            yield b.finish(), b.shared_memory


def test_batches_survive_real_dataloader_workers_intact() -> None:
    loader = DataLoader(_Batches(per_worker=7, batch_size=3), batch_size=None, num_workers=2)
    received = list(loader)
    assert len(received) == 6  # per worker: 3 + 3 + 1
    assert all(shared for _, shared in received)
    ids = sorted(int(i) for batch, _ in received for i in batch.ids)
    assert ids == sorted([*range(7), *range(100, 107)])
    for batch, _ in received:
        assert isinstance(batch, Batch)
        assert batch.images.shape[1:] == (SIZE, SIZE, 3)
        for row, gid in enumerate(batch.ids.tolist()):
            assert np.array_equal(batch.images[row].numpy(), decoded(jpeg(gid)))
        assert batch.labels.tolist() == [gid % 100 for gid in batch.ids.tolist()]


def _numbered_batch(first: int, size: int) -> Batch:
    builder = BatchBuilder(size, 0, NoDecode())
    rng = np.random.default_rng(0)
    for gid in range(first, first + size):
        builder.add(b"\xff\xd8\xff\xe0" + bytes(gid % 7), gid % 3, gid, rng)
    return builder.finish()


@given(st.integers(0, 40), st.integers(1, 9))
def test_grouped_keeps_every_batch_in_order_in_groups_of_size(count: int, size: int) -> None:
    batches = [_numbered_batch(10 * i, 1 + i % 4) for i in range(count)]
    items = list(grouped(iter(batches), size))
    if size == 1 or count == 0:
        assert items == batches
        return
    assert isinstance(items[0], Batch)
    assert all(isinstance(item, BatchGroup) for item in items[1:])
    rest = count - 1
    lengths = [len(item) for item in items[1:] if isinstance(item, BatchGroup)]
    assert lengths == [size] * (rest // size) + ([rest % size] if rest % size else [])
    flat = [items[0]] + [
        b for item in items[1:] if isinstance(item, BatchGroup) for b in item.batches
    ]
    assert [b.ids.tolist() for b in flat] == [b.ids.tolist() for b in batches]


def test_grouped_and_batch_group_reject_bad_sizes() -> None:
    with pytest.raises(ValueError, match="size=0"):
        list(grouped(iter([]), 0))
    with pytest.raises(ValueError, match="at least one batch"):
        BatchGroup(())


def test_a_group_pickles_as_its_batches() -> None:
    group = BatchGroup((_numbered_batch(0, 3), _numbered_batch(3, 2)))
    back = pickle.loads(pickle.dumps(group))
    assert isinstance(back, BatchGroup) and len(back) == 2
    for got, sent in zip(back.batches, group.batches, strict=True):
        for a, b in zip(got, sent, strict=True):
            assert torch.equal(a, b)
    assert repr(back) == "BatchGroup(2 batches)"


def test_the_dataloader_pins_every_batch_of_a_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinning needs CUDA; here ``Tensor.pin_memory`` is replaced by a marked copy, and the
    DataLoader's own pinning function must reach every tensor of every batch in the group."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned: list[int] = []

    def fake_pin(self: torch.Tensor) -> torch.Tensor:
        copy = self.clone()
        pinned.append(id(copy))
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    group = BatchGroup((_numbered_batch(0, 3), _numbered_batch(3, 2)))
    out = pin_memory(group)
    assert isinstance(out, BatchGroup) and len(out) == 2
    assert sorted(id(t) for b in out.batches for t in b) == sorted(pinned)
    assert len(pinned) == 2 * len(Batch._fields)
    for got, sent in zip(out.batches, group.batches, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(got, sent, strict=True))


def test_a_batch_without_pixels_travels_as_its_shape() -> None:
    batch = _numbered_batch(5, 4)
    assert batch.images.shape == (4, 0, 0, 3)
    data = ForkingPickler.dumps(batch)
    assert b"rebuild_storage" not in data  # no shared-memory storage for zero pixels
    back = pickle.loads(data)
    assert back.images.shape == (4, 0, 0, 3) and back.images.dtype == torch.uint8
    for got, sent in zip(back, batch, strict=True):
        assert torch.equal(got, sent)
