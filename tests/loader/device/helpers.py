"""What the device tests share: fake GPU libraries (broken or working) on ``sys.path``, JPEGs
carrying an EXIF orientation, and ``Log``, the ordered record the fakes of streams write to."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import with_exif_orientation

__all__ = [
    "Log",
    "fake_package",
    "hide_modules",
    "oriented_jpeg",
]


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
