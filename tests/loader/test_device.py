"""Tests for loader/device/prefetcher.py: conversion, ordering and stream hand-over of
DevicePrefetcher."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from loader.batch import Batch, BatchBuilder
from loader.decode import eval_transform
from loader.device.prefetcher import DeviceBatch, DevicePrefetcher, resolve_device

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_batch(seed: int, n: int = 3, height: int = 5, width: int = 7) -> Batch:
    rng = np.random.default_rng(seed)
    return Batch(
        images=torch.from_numpy(rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)),
        labels=torch.arange(n, dtype=torch.int64) + 10 * seed,
        ids=torch.arange(n, dtype=torch.int64) + 1000 * seed,
        padded=torch.tensor([i == n - 1 for i in range(n)]),
        nbytes=torch.full((n,), 100 + seed, dtype=torch.int64),
    )


def reference(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalised float64 NCHW, element by element from the definition."""
    x = images.numpy().astype(np.float64)
    n, h, w, _ = x.shape
    out = np.empty((n, 3, h, w))
    for c in range(3):
        out[:, c] = (x[..., c] / 255.0 - mean[c]) / std[c]
    return out


def check(got: DeviceBatch, host: Batch, channels_last: bool = True) -> None:
    n, h, w, _ = host.images.shape
    assert got.images.shape == (n, 3, h, w) and got.images.dtype == torch.float32
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert got.images.is_contiguous(memory_format=layout)
    np.testing.assert_allclose(
        got.images.cpu().double().numpy(), reference(host.images, MEAN, STD), rtol=0, atol=2e-6
    )
    assert torch.equal(got.labels.cpu(), host.labels)
    assert torch.equal(got.ids, host.ids) and got.ids.device.type == "cpu"
    assert torch.equal(got.padded.cpu(), host.padded)
    assert torch.equal(got.nbytes, host.nbytes) and got.nbytes.device.type == "cpu"


def test_cpu_values_layout_and_passthrough() -> None:
    batches = [make_batch(seed) for seed in range(4)]
    copies = [Batch(*(t.clone() for t in b)) for b in batches]
    prefetcher = DevicePrefetcher(batches, device="cpu")
    assert len(prefetcher) == 4
    got = list(prefetcher)
    assert len(got) == 4
    for g, host in zip(got, copies, strict=True):
        assert isinstance(g, DeviceBatch)
        assert g.images.device.type == "cpu"
        check(g, host)
    for b, c in zip(batches, copies, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(b, c, strict=True))


def test_cpu_contiguous_nchw_when_asked() -> None:
    host = make_batch(1, height=4, width=4)
    (got,) = DevicePrefetcher([host], device="cpu", channels_last=False)
    check(got, host, channels_last=False)
    assert got.images.stride() == (48, 16, 4, 1)


def test_channels_last_strides() -> None:
    (got,) = DevicePrefetcher([make_batch(0, n=2, height=4, width=6)], device="cpu")
    assert got.images.stride() == (72, 1, 18, 3)


def test_custom_mean_and_std() -> None:
    host = make_batch(2)
    (got,) = DevicePrefetcher([host], device="cpu", mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25))
    expected = reference(host.images, (0.0, 0.5, 1.0), (1.0, 0.5, 0.25))
    np.testing.assert_allclose(got.images.double().numpy(), expected, rtol=0, atol=2e-6)


def test_each_iteration_is_a_new_pass_in_order_and_ends() -> None:
    batches = [make_batch(seed, n=2) for seed in range(3)]
    prefetcher = DevicePrefetcher(batches, device="cpu")
    for _ in range(2):
        it = iter(prefetcher)
        assert [next(it).ids.tolist() for _ in range(3)] == [b.ids.tolist() for b in batches]
        with pytest.raises(StopIteration):
            next(it)


def test_empty_loader_yields_nothing() -> None:
    assert list(DevicePrefetcher([], device="cpu")) == []


def test_len_needs_a_sized_loader() -> None:
    prefetcher = DevicePrefetcher((make_batch(s) for s in range(2)), device="cpu")
    with pytest.raises(TypeError, match="loader with a length"):
        len(prefetcher)
    assert len(list(prefetcher)) == 2


def test_tuples_are_accepted_as_batches() -> None:
    host = make_batch(3)
    (got,) = DevicePrefetcher([tuple(host)], device="cpu")  # type: ignore[list-item]
    check(got, host)


def test_zero_sized_images_pass_through() -> None:
    host = make_batch(0, n=4, height=0, width=0)
    (got,) = DevicePrefetcher([host], device="cpu")
    assert got.images.shape == (4, 3, 0, 0)
    assert got.nbytes.tolist() == [100] * 4


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.zeros(2, 4, 4, 3, dtype=torch.float32), "expected uint8 images"),
        (torch.zeros(4, 4, 3, dtype=torch.uint8), "expected uint8 images"),
        (torch.zeros(2, 4, 4, 4, dtype=torch.uint8), "or float \\[B, 3, H, W\\], got"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.int32), "dtype=torch.int32"),
    ],
)
def test_bad_images_are_rejected(images: torch.Tensor, match: str) -> None:
    batch = make_batch(0, n=2)._replace(images=images)
    with pytest.raises(ValueError, match=match):
        list(DevicePrefetcher([batch], device="cpu"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mean": (0.5, 0.5)}, "3 per-channel values for mean"),
        ({"std": (0.5, 0.5, 0.5, 0.5)}, "3 per-channel values for std"),
        ({"std": (0.5, 0.0, 0.5)}, "positive std"),
        ({"std": (0.5, -1.0, 0.5)}, "positive std"),
        ({"device": "meta"}, "'auto', 'cpu' or 'cuda"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DevicePrefetcher([], **kwargs)  # type: ignore[arg-type]


def test_auto_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_an_error() -> None:
    with pytest.raises(ValueError, match="without CUDA"):
        DevicePrefetcher([], device="cuda")


class _Builder(IterableDataset):
    def __init__(self, images: list[bytes]) -> None:
        self.images = images

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        assert info is not None
        b = BatchBuilder(2, 8, eval_transform(8))
        rng = np.random.default_rng(0)
        for gid in range(info.id, len(self.images), info.num_workers):
            b.add(self.images[gid], gid % 3, gid, rng)
            if b.full:
                yield b.finish()
        if len(b):
            yield b.finish()


def _jpegs(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [
        cv2.imencode(".jpg", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))[1].tobytes()
        for _ in range(n)
    ]


def _decoded(data: bytes) -> torch.Tensor:
    out = np.empty((1, 8, 8, 3), np.uint8)
    eval_transform(8)(data, out[0], np.random.default_rng(0))
    return torch.from_numpy(out)


def test_through_a_real_dataloader() -> None:
    images = _jpegs(5)
    loader = DataLoader(_Builder(images), batch_size=None, num_workers=2)
    got = list(DevicePrefetcher(loader, device="cpu"))
    assert len(got) == 3
    assert sorted(i for g in got for i in g.ids.tolist()) == list(range(5))
    for g in got:
        for row, gid in enumerate(g.ids.tolist()):
            expected = reference(_decoded(images[gid]), MEAN, STD)[0]
            np.testing.assert_allclose(g.images[row].double().numpy(), expected, atol=2e-6)
            assert int(g.labels[row]) == gid % 3


# --- CUDA ----------------------------------------------------------------------------------


@cuda_only
def test_cuda_matches_cpu_and_reference() -> None:
    batches = [make_batch(seed, n=4, height=9, width=11) for seed in range(5)]
    on_cpu = list(DevicePrefetcher(batches, device="cpu"))
    on_gpu = list(DevicePrefetcher(batches, device="cuda"))
    assert len(on_gpu) == 5
    for g, c, host in zip(on_gpu, on_cpu, batches, strict=True):
        assert g.images.is_cuda and g.labels.is_cuda and g.padded.is_cuda
        check(g, host)
        torch.testing.assert_close(g.images.cpu(), c.images, rtol=0, atol=1e-6)


@cuda_only
def test_cuda_auto_and_pinned_input() -> None:
    host = make_batch(1, n=2)
    pinned = Batch(*(t.pin_memory() for t in host))
    (got,) = DevicePrefetcher([pinned], device="auto")
    assert got.images.is_cuda
    check(got, host)


@cuda_only
def test_cuda_handover_under_load_on_a_consumer_stream() -> None:
    """The consumer sees finished copies even when it runs on its own busy stream."""
    batches = [make_batch(seed, n=64, height=64, width=64) for seed in range(12)]
    consumer = torch.cuda.Stream()
    busy = torch.randn(2048, 2048, device="cuda")
    seen = []
    with torch.cuda.stream(consumer):
        for g in DevicePrefetcher(batches, device="cuda"):
            for _ in range(4):
                busy = busy @ busy
                busy /= busy.norm()
            seen.append(g.images.clone())  # queued behind the matmuls, after g is released
    torch.cuda.synchronize()
    for images, host in zip(seen, batches, strict=True):
        expected = reference(host.images, MEAN, STD)
        np.testing.assert_allclose(images.cpu().double().numpy(), expected, rtol=0, atol=2e-6)


@cuda_only
def test_cuda_with_a_pinning_dataloader() -> None:
    images = _jpegs(6)
    loader = DataLoader(_Builder(images), batch_size=None, num_workers=2, pin_memory=True)
    got = list(DevicePrefetcher(loader, device="cuda"))
    assert sorted(i for g in got for i in g.ids.tolist()) == list(range(6))
    for g in got:
        for row, gid in enumerate(g.ids.tolist()):
            expected = reference(_decoded(images[gid]), MEAN, STD)[0]
            np.testing.assert_allclose(g.images[row].cpu().double().numpy(), expected, atol=2e-6)
