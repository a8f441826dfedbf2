"""Tests for decode="device": the byte batch (loader/device/bytebatch.py), the device decoder
and its routing and fallbacks (loader/device/decoder.py, loader/device/_jpegbackends.py) and
their use by
ShardDataset, make_loader and DevicePrefetcher.

Without CUDA the device half runs with the CPU stand-in backend; only the nvJPEG tests at the
end need a GPU. Tolerance between the worker decode (OpenCV, reduced-scale DCT decode) and the
device path (full decode, box average, bilinear): at most 8 levels per pixel and 1.5 levels
on average over a batch, for the smooth test images used here.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.badsamples import BadSampleError
from loader.batch import BatchGroup
from loader.crop import CropBox, center_crop, random_resized_crop
from loader.dataloader import make_loader
from loader.dataset import ShardDataset
from loader.decode import DecodeError, ImageDecoder
from loader.device._jpegbackends import CpuJpegStandIn, jpeg_backend
from loader.device.bytebatch import ByteBatch, ByteBatchBuilder, CropPlan, sample_bytes
from loader.device.decoder import DeviceDecoder, crop_resize, needs_cpu
from loader.device.prefetcher import DevicePrefetcher
from loader.tracker import DuplicateTracker
from loader.worker.pools import ImagePool
from shards.imageinfo import image_info
from tests.loader.helpers import label_of, write_test_shards

DATA = Path(__file__).resolve().parents[1] / "data"
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MAX_LEVELS, MEAN_LEVELS = 8, 1.5
PIXELS = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}  # images in 0..255


def smooth(height: int, width: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [255 * x / width, 255 * y / height, 128 + 90 * np.sin((x + 3 * seed) / 9.0)], axis=-1
    ).astype(np.uint8)


def jpeg(gid: int, *params: int) -> bytes:
    image = smooth(40 + 9 * (gid % 5), 56 + 11 * (gid % 4), gid)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95, *params])[1].tobytes()


def with_comment(data: bytes, text: bytes) -> bytes:
    """``data`` with a JPEG COM segment after SOI (decoders ignore it)."""
    return data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]


def no_scan(gid: int) -> bytes:
    """A JPEG whose headers parse but that has no scan: no decoder can read it."""
    data = jpeg(gid)
    return data[: data.find(b"\xff\xda")] + b"\xff\xd9"


REFUSED = b"gpu-refuses"
SPECIAL: dict[int, Callable[[int], bytes]] = {
    2: lambda g: (DATA / "cmyk_16x8.jpg").read_bytes(),
    5: lambda g: cv2.imencode(".png", smooth(33, 47, g))[1].tobytes(),
    7: lambda g: jpeg(g, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    11: lambda g: cv2.imencode(".webp", smooth(30, 50, g), [cv2.IMWRITE_WEBP_QUALITY, 101])[
        1
    ].tobytes(),
}


def mixed(gid: int) -> bytes:
    return SPECIAL[gid](gid) if gid in SPECIAL else jpeg(gid)


def run(loader: Any, device: str = "cpu", **options: Any) -> list[tuple[torch.Tensor, ...]]:
    """Every batch the prefetcher hands over: (ids, labels, padded, uint8-valued images)."""
    return [
        (b.ids.clone(), b.labels.cpu(), b.padded.cpu(), b.images.cpu())
        for b in DevicePrefetcher(loader, device=device, **PIXELS, **options)
    ]


def assert_same_delivery(worker: list[Any], device: list[Any]) -> None:
    assert len(worker) == len(device)
    for (ids, labels, padded, images), (ids2, labels2, padded2, images2) in zip(
        worker, device, strict=True
    ):
        assert torch.equal(ids, ids2) and torch.equal(labels, labels2)
        assert torch.equal(padded, padded2)
        diff = (images - images2).abs()
        assert float(diff.max()) <= MAX_LEVELS and float(diff.mean()) <= MEAN_LEVELS


def loader(manifest: Path, decode: Any, **options: Any) -> Any:
    settings = {"batch_size": 4, "num_workers": 2, "image_size": 16, "seed": 5, **options}
    return make_loader(str(manifest), decode=decode, **settings)


def tracked(batches: list[Any], num_samples: int) -> Any:
    tracker = DuplicateTracker(num_samples)
    for ids, _, padded, _ in batches:
        tracker.update(ids, padded)
    return tracker.end_epoch()


# --- the byte batch ------------------------------------------------------------------------


def test_byte_batches_from_workers_carry_the_shards_bytes(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [7, 6, 5], image_bytes=mixed)
    seen = []
    for batch in loader(manifest, "device", transfer_batches=2):
        assert isinstance(batch, ByteBatch) and batch.data.dtype == torch.uint8
        assert batch.data.dim() == 1 and int(batch.spans[:, 1].max()) <= batch.data.numel()
        for row, gid in enumerate(batch.ids.tolist()):
            assert bytes(sample_bytes(batch, row)) == mixed(gid)
            assert int(batch.nbytes[row]) == len(mixed(gid)) and int(batch.labels[row]) == label_of(
                gid
            )
        seen += batch.ids[~batch.padded].tolist()
    assert sorted(seen) == list(range(18))


def test_a_byte_batch_travels_as_one_buffer_handle_and_one_array() -> None:
    pools: dict[int, ImagePool] = {}
    builder = ByteBatchBuilder(
        3,
        DeviceDecoder(8, train=True),
        shared_memory=True,
        pools=lambda n: pools.setdefault(n, ImagePool(n)),
    )
    rng = np.random.default_rng(0)
    for gid in range(2):
        builder.add(jpeg(gid), label_of(gid), gid, rng)
    builder.repeat(1)
    batch = builder.finish()
    function, args = _reduced(batch)
    assert function.__name__ == "_unpack_lent"
    assert not any(isinstance(a, torch.Tensor) for a in args)
    assert isinstance(args[2], np.ndarray) and args[2].shape == (12, 3)
    received = pickle.loads(ForkingPickler.dumps(batch))
    assert all(torch.equal(a, b) for a, b in zip(received, batch, strict=True))
    assert bytes(sample_bytes(received, 2)) == jpeg(1)
    assert received.padded.tolist() == [False, False, True] and received.nbytes[2] == 0


def _reduced(batch: ByteBatch) -> tuple[Any, tuple[Any, ...]]:
    from loader.device.bytebatch import _reduce_for_transfer

    function, args = _reduce_for_transfer(batch)
    return function, args


def test_builder_slots_repeats_and_errors() -> None:
    builder = ByteBatchBuilder(2, DeviceDecoder(8, train=False), shared_memory=False)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="empty batch"):
        builder.finish()
    with pytest.raises(ValueError, match="filled slot"):
        builder.repeat(0)
    with pytest.raises(DecodeError):
        builder.add(b"not an image at all", 0, 0, rng)
    assert len(builder) == 0
    builder.add(jpeg(3), 0, 3, rng)
    builder.repeat(0)
    assert builder.full
    with pytest.raises(ValueError, match="free slot"):
        builder.add(jpeg(4), 1, 4, rng)
    batch = builder.finish()
    assert batch.spans.tolist() == [[0, len(jpeg(3))]] * 2 and batch.data.numel() == len(jpeg(3))
    assert len(builder) == 0 and not builder.full


def test_large_samples_grow_the_staging_buffer() -> None:
    big = cv2.imencode(".png", np.random.default_rng(1).integers(0, 256, (700, 700, 3), np.uint8))[
        1
    ].tobytes()
    assert len(big) > 1 << 20
    builder = ByteBatchBuilder(2, DeviceDecoder(8, train=True), shared_memory=False)
    rng = np.random.default_rng(0)
    builder.add(jpeg(1), 0, 1, rng)
    builder.add(big, 1, 2, rng)
    batch = builder.finish()
    assert bytes(sample_bytes(batch, 0)) == jpeg(1) and bytes(sample_bytes(batch, 1)) == big
    assert batch.cpu.tolist() == [False, True]


class FixedPlanner:
    """A worker half for payloads that are not images: every sample gets the same plan."""

    image_size = 8

    def plan(self, data: bytes | memoryview, rng: np.random.Generator) -> CropPlan:
        return CropPlan(CropBox(1, 2, 3, 4), bool(len(data) % 2), len(data) > 100)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=300), st.booleans()), min_size=1, max_size=9),
    st.integers(1, 4),
)
def test_byte_batches_keep_every_payload_and_repeat(
    samples: list[tuple[bytes, bool]], batch_size: int
) -> None:
    """Any payload lengths, batch sizes and repeats: spans give back each payload, a repeat
    shares its source's span with 0 bytes, and a transfer round trip changes nothing."""
    builder = ByteBatchBuilder(batch_size, FixedPlanner(), shared_memory=True)
    rng = np.random.default_rng(0)
    expected: list[tuple[bytes, int, bool]] = []
    batches = []
    for gid, (payload, repeat) in enumerate(samples):
        builder.add(payload, gid % 3, gid, rng)
        expected.append((payload, gid, False))
        if builder.full:
            batches.append(builder.finish())
        if repeat and len(builder):
            builder.repeat(0)
            first = len(expected) - len(builder) + 1
            expected.append((expected[first][0], expected[first][1], True))
        if builder.full:
            batches.append(builder.finish())
    if len(builder):
        batches.append(builder.finish())
    got = []
    for batch in batches:
        received = pickle.loads(ForkingPickler.dumps(batch))
        assert all(torch.equal(a, b) for a, b in zip(received, batch, strict=True))
        for row in range(len(batch.ids)):
            got.append((bytes(sample_bytes(received, row)), int(received.ids[row]),
                        bool(received.padded[row])))  # fmt: skip
            size = len(got[-1][0])
            assert int(received.nbytes[row]) == (0 if got[-1][2] else size)
            assert received.boxes[row].tolist() == [1, 2, 3, 4]
            assert bool(received.cpu[row]) == (size > 100)
        assert all(0 < len(batch.ids) <= batch_size for batch in batches)
    assert got == expected


def test_the_dataloader_pins_every_tensor_of_a_group_of_byte_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pinning needs CUDA; ``Tensor.pin_memory`` is replaced by a marked copy here."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned: list[int] = []

    def fake_pin(self: torch.Tensor) -> torch.Tensor:
        copy = self.clone()
        pinned.append(id(copy))
        return copy

    builder = ByteBatchBuilder(2, FixedPlanner(), shared_memory=False)
    rng = np.random.default_rng(0)
    for gid in range(3):
        builder.add(bytes([gid + 1]) * (gid + 1), 0, gid, rng)
        if builder.full:
            first = builder.finish()
    group = BatchGroup((first, builder.finish()))
    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    out = pin_memory(group)
    assert isinstance(out, BatchGroup) and all(isinstance(b, ByteBatch) for b in out.batches)
    assert sorted(id(t) for b in out.batches for t in b) == sorted(pinned)
    for got, sent in zip(out.batches, group.batches, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(got, sent, strict=True))


# --- the same crops as the worker decode ---------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_boxes_are_the_cpu_paths_draws_for_the_seed(tmp_path: Path, train: bool) -> None:
    """Replays each worker's per-batch generators (no shuffle: they draw only crops) with
    torchvision's rule, independently of the loader's code, and finds every box and flip."""
    manifest = write_test_shards(tmp_path, [9, 8], image_bytes=jpeg)
    device_loader = loader(manifest, "device", shuffle_buffer=0, train=train)
    got: dict[int, tuple[list[int], bool]] = {}
    for batch in device_loader:
        for row, gid in enumerate(batch.ids.tolist()):
            if not batch.padded[row]:
                got[gid] = (batch.boxes[row].tolist(), bool(batch.flips[row]))
    dataset: ShardDataset = device_loader.dataset
    expected = {}
    for worker, plan in enumerate(dataset.epoch_plan(0, 2)):
        gids = [
            gid
            for seg in plan.segments
            for gid in range(
                dataset.source.shards[seg.shard].first_index + seg.start,
                dataset.source.shards[seg.shard].first_index + seg.stop,
            )
        ]
        for position, gid in enumerate(gids):
            if position % dataset.batch_size == 0:  # each batch draws from its own generator
                rng = np.random.default_rng([5, 0, 0, worker, position // dataset.batch_size])
            info = image_info(jpeg(gid))
            assert info is not None
            if train:
                box = random_resized_crop(info.width, info.height, rng)
                flip = bool(rng.random() < 0.5)
            else:
                box, flip = center_crop(info.width, info.height, 16), False
            expected[gid] = (list(box), flip)
    assert got == expected


@pytest.mark.parametrize("train", [True, False])
def test_device_decode_delivers_what_the_worker_decode_does(tmp_path: Path, train: bool) -> None:
    manifest = write_test_shards(tmp_path, [9, 8, 6], image_bytes=jpeg)
    worker = run(loader(manifest, "opencv", train=train, transfer_batches=2))
    device_loader = loader(manifest, "device", train=train, transfer_batches=2)
    device = run(device_loader)
    assert_same_delivery(worker, device)
    counts = device_loader.dataset.decoder.counts
    assert (counts.device, counts.flagged, counts.rejected, counts.failed) == (23, 0, 0, 0)


def test_device_crop_is_within_tolerance_where_the_cpu_decodes_at_reduced_scale() -> None:
    data = cv2.imencode(".jpg", smooth(240, 320, 0), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    (full,) = CpuJpegStandIn().decode([torch.frombuffer(bytearray(data), dtype=torch.uint8)])
    for size, box, flip in [
        (64, CropBox(10, 20, 50, 60), False),  # upscale
        (16, CropBox(10, 20, 50, 60), True),  # 1/2
        (32, CropBox(5, 7, 150, 170), False),  # 1/4
        (16, CropBox(0, 0, 240, 320), True),  # 1/8
    ]:
        cpu = np.empty((size, size, 3), np.uint8)
        ImageDecoder(size, train=True).decode_crop(data, cpu, box, flip)
        diff = np.abs(cpu.astype(int) - crop_resize(full, box, flip, size).numpy())
        assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (size, box)


# --- routing and fallbacks -----------------------------------------------------------------


def test_header_routes_cmyk_png_webp_and_progressive_to_the_cpu() -> None:
    assert [needs_cpu(image_info(mixed(g))) for g in (0, 2, 5, 7, 11)] == [
        False,
        True,
        True,
        True,
        True,
    ]
    gray = cv2.imencode(".jpg", smooth(20, 20, 0)[:, :, 0])[1].tobytes()
    assert not needs_cpu(image_info(gray)) and needs_cpu(None)


def test_special_samples_are_decoded_on_the_cpu_with_the_same_crop(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [8, 7], image_bytes=mixed)
    flagged = []
    for batch in loader(manifest, "device"):
        flagged += batch.ids[batch.cpu].tolist()
    assert sorted(set(flagged)) == sorted(SPECIAL)
    device_loader = loader(manifest, "device")
    assert_same_delivery(run(loader(manifest, "opencv")), run(device_loader))
    counts = device_loader.dataset.decoder.counts
    assert (counts.flagged, counts.device, counts.failed) == (len(SPECIAL), 15 - len(SPECIAL), 0)


def test_a_batch_the_device_rejects_is_redecoded_per_image(tmp_path: Path) -> None:
    refused = {4, 9}

    def images(gid: int) -> bytes:
        return with_comment(jpeg(gid), REFUSED) if gid in refused else jpeg(gid)

    manifest = write_test_shards(tmp_path, [6, 6], image_bytes=images)
    decoder = DeviceDecoder(16, train=True, backend=CpuJpegStandIn(refuse=_refuses))
    device_loader = loader(manifest, decoder)
    assert_same_delivery(run(loader(manifest, "opencv")), run(device_loader))
    counts = decoder.counts
    assert (counts.rejected, counts.device, counts.failed) == (2, 10, 0)
    assert counts.retried_batches == 2


def _refuses(data: bytes) -> bool:
    return REFUSED in data


def test_a_corrupt_image_meets_the_bad_sample_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def images(gid: int) -> bytes:
        return no_scan(gid) if gid == 6 else mixed(gid)

    manifest = write_test_shards(tmp_path, [7, 7], image_bytes=images)
    worker = run(loader(manifest, "opencv"))
    device_loader = loader(manifest, "device")
    with caplog.at_level(logging.WARNING, logger="shardfeed.loader"):
        device = run(device_loader)
    expected = tracked(worker, 14)
    assert tracked(device, 14) == expected
    assert (expected.missing, expected.padded, expected.duplicates) == (1, 1, 0)
    assert device_loader.dataset.decoder.counts.failed == 1
    [message] = [r.getMessage() for r in caplog.records if "decoded neither" in r.getMessage()]
    assert "shard-000000.tar sample 6 (id 6)" in message
    with pytest.raises(BadSampleError, match=r"shard-000000.tar sample 6 \(id 6\)"):
        run(loader(manifest, "device", bad_samples="raise"))
    with pytest.raises(BadSampleError, match="more than skip_budget=0"):
        run(loader(manifest, "device", skip_budget=0))


def test_a_batch_of_only_bad_samples_raises(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [3], image_bytes=no_scan)
    with pytest.raises(BadSampleError, match="every sample of a batch was bad"):
        run(loader(manifest, "device", num_workers=0, batch_size=3))


def test_unreadable_header_is_a_worker_side_bad_sample(tmp_path: Path) -> None:
    def images(gid: int) -> bytes:
        return b"\xff\xd8\xff garbage" if gid == 1 else jpeg(gid)

    manifest = write_test_shards(tmp_path, [5], image_bytes=images)
    device = run(loader(manifest, "device", num_workers=1))
    assert tracked(device, 5) == tracked(run(loader(manifest, "opencv", num_workers=1)), 5)


# --- the decoder is a parameter ------------------------------------------------------------


@pytest.mark.parametrize(
    "decode, match",
    [
        ("gpu", "expected decode in"),
        ("", "expected decode in"),
        (3, "expected decode in"),
        (object(), "expected decode in"),
    ],
)
def test_unknown_decode_is_a_value_error(tmp_path: Path, decode: Any, match: str) -> None:
    manifest = write_test_shards(tmp_path, [2], image_bytes=jpeg)
    with pytest.raises(ValueError, match=match):
        ShardDataset(str(manifest), decode=decode)
    with pytest.raises(ValueError, match="image_size >= 1"):
        ShardDataset(str(manifest), decode="device", image_size=0)


def test_a_decoder_object_brings_its_own_size(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [5], image_bytes=jpeg)
    batches = run(loader(manifest, ImageDecoder(12, train=False), num_workers=1))
    assert {tuple(images.shape[1:]) for *_, images in batches} == {(3, 12, 12)}
    device_decoder = DeviceDecoder(10, train=False, backend="cpu")
    ds = ShardDataset(str(manifest), decode=device_decoder, batch_size=2)
    assert ds.decoder is device_decoder and ds.image_size == 10
    assert all(isinstance(b, ByteBatch) for b in ds)
    plain = ShardDataset(str(manifest), decode=False, image_size=20)
    assert plain.image_size == 20 and not plain.decode and plain.decoder.image_size == 0


def test_prefetcher_needs_a_decoder_for_byte_batches(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [3], image_bytes=jpeg)
    batches = list(ShardDataset(str(manifest), decode="device", image_size=8, batch_size=2))
    with pytest.raises(ValueError, match="expected a decoder for byte batches"):
        list(DevicePrefetcher(batches, device="cpu"))
    got = list(DevicePrefetcher(batches, device="cpu", decoder=DeviceDecoder(8, train=True)))
    assert [tuple(g.images.shape) for g in got] == [(2, 3, 8, 8), (1, 3, 8, 8)]


def test_bad_backend_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected backend"):
        DeviceDecoder(8, train=True, backend="nvjpeg")
    with pytest.raises(ValueError, match="expected a JPEG backend"):
        jpeg_backend(torch.device("cpu"), "gpu")


def test_without_a_gpu_library_the_cuda_backend_says_what_to_install() -> None:
    import importlib.util

    from loader.device._jpegbackends import GpuDecodeUnavailable, load_gpu_library

    if any(importlib.util.find_spec(name) for name in ("torchcodec", "torchvision")):
        pytest.skip("checks the message where neither TorchCodec nor torchvision is installed")
    with pytest.raises(GpuDecodeUnavailable, match=r"pip install 'shardfeed\[gpu\]'"):
        load_gpu_library()


def test_plan_draws_as_many_numbers_as_the_cpu_decoder() -> None:
    decoder = DeviceDecoder(16, train=True)
    for gid in range(12):
        data = mixed(gid)
        a, b = np.random.default_rng(gid), np.random.default_rng(gid)
        plan = decoder.plan(data, a)
        out = np.empty((16, 16, 3), np.uint8)
        ImageDecoder(16, train=True)(data, out, b)
        assert a.bit_generator.state == b.bit_generator.state
        assert isinstance(plan, CropPlan)


# --- CUDA (nvJPEG) -------------------------------------------------------------------------


@cuda_only
def test_cuda_decoder_matches_the_worker_decode(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [9, 8], image_bytes=mixed)
    device_loader = loader(manifest, "device", pin_memory=True)
    assert_same_delivery(run(loader(manifest, "opencv")), run(device_loader, "cuda"))
    counts = device_loader.dataset.decoder.counts
    assert counts.flagged == len(SPECIAL) and counts.device == 17 - len(SPECIAL)


@cuda_only
def test_cuda_corrupt_image_falls_back_then_meets_the_policy(tmp_path: Path) -> None:
    def images(gid: int) -> bytes:
        return no_scan(gid) if gid == 3 else jpeg(gid)

    manifest = write_test_shards(tmp_path, [8], image_bytes=images)
    device_loader = loader(manifest, "device")
    device = run(device_loader, "cuda")
    assert tracked(device, 8) == tracked(run(loader(manifest, "opencv")), 8)
    counts = device_loader.dataset.decoder.counts
    assert counts.failed == 1 and counts.retried_batches >= 1


@cuda_only
def test_cuda_backend_decodes_what_opencv_does() -> None:
    streams = [torch.frombuffer(bytearray(jpeg(g)), dtype=torch.uint8) for g in range(5)]
    on_gpu = jpeg_backend(torch.device("cuda"), "auto").decode(streams)
    on_cpu = CpuJpegStandIn().decode(streams)
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert g.is_cuda and g.shape == c.shape
        assert float((g.cpu().int() - c.int()).abs().float().mean()) <= MEAN_LEVELS
