"""loader/device/_jpegbackends.py: a broken GPU library falls back with one logged reason, and
the decode library's stream waits for the current stream before every call."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from loader.device._jpegbackends import (
    CudaJpeg,
    GpuDecodeUnavailable,
    GpuLibrary,
    gpu_library_status,
    jpeg_backend,
    load_gpu_library,
)
from tests.loader.device.helpers import Log, fake_package, hide_modules

BROKEN_CODEC = "raise OSError('libnvjpeg.so.12: cannot open shared object file')\n"
BROKEN_VISION = "raise RuntimeError('operator torchvision::nms does not exist')\n"
WORKING_VISION_IO = """
import torch

def decode_jpeg(input, device='cpu', mode=None):
    return [torch.zeros(3, 2, 2, dtype=torch.uint8) for _ in input]
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on ``sys.path`` for fake libraries, with the real ones forgotten."""
    monkeypatch.syspath_prepend(str(tmp_path))
    hide_modules(monkeypatch, "torchcodec", "torchvision")
    return tmp_path


def test_a_broken_torchcodec_falls_back_to_torchvision_and_says_why(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_package(site, "torchcodec", BROKEN_CODEC)
    fake_package(site, "torchvision", "", io=WORKING_VISION_IO)
    with caplog.at_level(logging.INFO, logger="shardfeed.loader"):
        library = load_gpu_library()
    assert library.name == "torchvision" and library.mode == {"mode": "RGB"}
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "torchcodec did not import (OSError: libnvjpeg.so.12" in record.getMessage()
    backend = CudaJpeg(torch.device("cuda"), library=library, current_stream=lambda d: _Idle())
    assert backend.name == "torchvision"


def test_neither_library_loading_names_both_failures(site: Path) -> None:
    fake_package(site, "torchcodec", BROKEN_CODEC)
    fake_package(site, "torchvision", BROKEN_VISION)
    expected = (
        r"torchcodec: OSError: libnvjpeg.so.12.*; torchvision: RuntimeError: operator "
        r"torchvision::nms does not exist: pip install 'shardfeed\[gpu\]'"
    )
    with pytest.raises(GpuDecodeUnavailable, match=expected):
        load_gpu_library()
    with pytest.raises(GpuDecodeUnavailable):
        jpeg_backend(torch.device("cuda"))
    assert gpu_library_status() == {
        "torchcodec": "OSError: libnvjpeg.so.12: cannot open shared object file",
        "torchvision": "RuntimeError: operator torchvision::nms does not exist",
    }


def test_a_library_missing_its_function_is_reported_not_raised(site: Path) -> None:
    fake_package(site, "torchcodec", "", decoders="")
    fake_package(site, "torchvision", "", io=WORKING_VISION_IO)
    status = gpu_library_status()
    assert (
        status["torchcodec"].startswith("AttributeError: ")
        and "decode_jpeg" in status["torchcodec"]
    )
    assert status["torchvision"] == "available"


class _Idle:
    def synchronize(self) -> None:
        pass


class _Stream:
    def __init__(self, log: Log) -> None:
        self.log = log

    def synchronize(self) -> None:
        self.log("current stream synchronised")


def _recording_library(log: Log, *, takes_lists: bool = True) -> GpuLibrary:
    def decode(encoded: object, device: torch.device, mode: str) -> object:
        if isinstance(encoded, list):
            if not takes_lists:
                raise TypeError("expected a tensor")
            log(f"decode {len(encoded)}")
            return [torch.zeros(3, 4, 4, dtype=torch.uint8) for _ in encoded]
        log("decode 1")
        return torch.zeros(3, 4, 4, dtype=torch.uint8)

    return GpuLibrary("fake", decode, {"mode": "RGB"})


def _streams(n: int) -> list[torch.Tensor]:
    return [torch.zeros(10, dtype=torch.uint8) for _ in range(n)]


def test_the_current_stream_is_synchronised_before_each_batch_decode() -> None:
    log = Log()
    backend = CudaJpeg(
        torch.device("cuda", 0),
        library=_recording_library(log),
        current_stream=lambda device: _Stream(log),
    )
    for n in (3, 2):
        assert len(backend.decode(_streams(n))) == n
    assert [what for _, what in log.calls] == [
        "current stream synchronised",
        "decode 3",
        "current stream synchronised",
        "decode 2",
    ]


def test_one_call_per_image_waits_before_each_call() -> None:
    log = Log()
    backend = CudaJpeg(
        torch.device("cuda", 0),
        library=_recording_library(log, takes_lists=False),
        current_stream=lambda device: _Stream(log),
    )
    assert len(backend.decode(_streams(2))) == 2 and not backend.batched
    whats = [what for _, what in log.calls]
    assert (
        whats
        == ["current stream synchronised"]
        + [
            "current stream synchronised",
            "decode 1",
        ]
        * 2
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_repeated_batch_decodes_under_load_are_identical() -> None:
    """The race the stream wait prevents: the decoder's output recycles memory that kernels
    queued on the current stream still read. Each round queues a long kernel and reductions
    over tensors it then frees, decodes, and checks both the reductions and the pixels."""
    pytest.importorskip("torchvision", reason="needs torchvision or TorchCodec with nvJPEG")
    device = torch.device("cuda")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(16)]
    encoded = [
        torch.from_numpy(cv2.imencode(".jpg", image)[1].reshape(-1).copy()) for image in images
    ]
    backend = jpeg_backend(device)
    reference = [image.cpu() for image in backend.decode(encoded)]
    busy = torch.randn(4096, 4096, device=device)
    for round_ in range(50):
        held = [torch.full((3, 96, 128), round_, dtype=torch.uint8, device=device)]
        held += [torch.full((1 << 20,), 7, dtype=torch.uint8, device=device) for _ in range(8)]
        torch.cuda.synchronize(device)
        busy @ busy  # noqa: B018  (keeps the current stream busy)
        sums = [int(t.numel()) * (round_ if i == 0 else 7) for i, t in enumerate(held)]
        queued = [t.sum(dtype=torch.int64) for t in held]
        del held
        decoded = backend.decode(encoded)
        assert [int(q) for q in queued] == sums, f"round {round_}: memory overwritten"
        for got, want in zip(decoded, reference, strict=True):
            assert torch.equal(got.cpu(), want), f"round {round_}: decoded pixels differ"
