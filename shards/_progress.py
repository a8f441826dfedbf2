"""Progress for long work: a tqdm bar on a terminal, a log line every few seconds elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

from tqdm import tqdm

log = logging.getLogger("shardfeed.progress")


class Progress:
    """Counts items and bytes; shows items/s and MB/s. Not thread-safe: one owner calls it."""

    def __init__(self, total: int, what: str, *, enabled: bool = True, every_s: float = 5.0):
        self.total, self.what, self.every_s = total, what, every_s
        self.items = self.bytes = 0
        self._start = self._last_log = time.monotonic()
        self._bar: tqdm[Any] | None = None
        self._enabled = enabled
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(total=total, unit="img", desc=what, dynamic_ncols=True)

    def update(self, items: int, nbytes: int = 0) -> None:
        self.items += items
        self.bytes += nbytes
        now = time.monotonic()
        elapsed = max(now - self._start, 1e-9)
        if self._bar is not None:
            self._bar.update(items)
            self._bar.set_postfix_str(f"{self.bytes / elapsed / 1e6:.1f} MB/s", refresh=False)
        elif self._enabled and now - self._last_log >= self.every_s:
            self._last_log = now
            log.info(
                "%s: %d/%d images, %.0f img/s, %.1f MB/s",
                self.what,
                self.items,
                self.total,
                self.items / elapsed,
                self.bytes / elapsed / 1e6,
            )

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
