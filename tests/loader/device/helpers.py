"""What the device tests share: fake GPU libraries (broken or working) on ``sys.path``, JPEGs
carrying an EXIF orientation, ``Log``, the ordered record the fakes of streams write to, and
``FakeStreams``, recording fakes of the CUDA stream calls (``loader.device._overlap.StreamOps``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.helpers import with_exif_orientation

__all__ = [
    "DEVICE",
    "FakeStreams",
    "Log",
    "fake_package",
    "hide_modules",
    "oriented_jpeg",
]


DEVICE = torch.device("cuda", 0)  # never touched: every CUDA call goes to the fakes


def fake_package(root: Path, name: str, init: str, **modules: str) -> None:
    """Write package ``name`` under ``root``: ``__init__.py`` holds ``init``, each keyword a
    submodule's source."""
    package = root / name
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(init, encoding="utf-8")
    for module, source in modules.items():
        (package / f"{module}.py").write_text(source, encoding="utf-8")


def hide_modules(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Forget ``names`` and their submodules in ``sys.modules`` for the test (restored after)."""
    for loaded in list(sys.modules):
        if any(loaded == n or loaded.startswith(n + ".") for n in names):
            monkeypatch.delitem(sys.modules, loaded)


def oriented_jpeg(orientation: int, seed: int = 0, *, big_endian: bool = False) -> bytes:
    """A small smooth JPEG (not square, so a rotation would show) tagged with ``orientation``."""
    y, x = np.mgrid[0:24, 0:40]
    image = np.stack([6 * x, 10 * y, 128 + 0 * x + seed], axis=-1).astype(np.uint8)
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    return with_exif_orientation(data, orientation, big_endian=big_endian)


class Log:
    """An ordered record of what fakes were asked to do, each with the calling thread's name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, what: str) -> None:
        with self._lock:
            self.calls.append((threading.current_thread().name, what))

    def index(self, what: str) -> int:
        return [w for _, w in self.calls].index(what)

    def thread_of(self, what: str) -> str:
        return self.calls[self.index(what)][0]


class FakeEvent:
    def __init__(self, log: Log, number: int) -> None:
        self.log, self.number = log, number

    def record(self, stream: FakeStream) -> None:
        self.log(f"event {self.number} recorded on {stream.name}")


class FakeStream:
    def __init__(self, log: Log, name: str) -> None:
        self.log, self.name = log, name

    def wait_stream(self, stream: FakeStream) -> None:
        self.log(f"{self.name} waits for {stream.name}")

    def wait_event(self, event: FakeEvent) -> None:
        self.log(f"{self.name} waits on event {event.number}")

    def synchronize(self) -> None:
        self.log(f"host synchronises {self.name}")


class FakeStreams:
    """``StreamOps`` with a per-thread current stream, as CUDA's."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.consumer = FakeStream(log, "consumer")
        self.side: FakeStream | None = None
        self.events = 0
        self._local = threading.local()

    def current_stream(self, device: torch.device) -> FakeStream:
        return getattr(self._local, "stream", self.consumer)

    def new_stream(self, device: torch.device) -> FakeStream:
        self.side = FakeStream(self.log, "side")
        return self.side

    @contextmanager
    def use(self, stream: FakeStream) -> Iterator[None]:
        before = self.current_stream(DEVICE)
        self._local.stream = stream
        try:
            yield
        finally:
            self._local.stream = before

    def new_event(self) -> FakeEvent:
        self.events += 1
        return FakeEvent(self.log, self.events - 1)

    def record_stream(self, tensor: torch.Tensor, stream: FakeStream) -> None:
        first = int(tensor.flatten()[0]) if tensor.numel() else "(empty)"
        self.log(f"batch {first} tensor kept for {stream.name}")
