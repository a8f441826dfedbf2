"""``StatsReporter``: a training process's loading stats, sent to the shardfeed service.

Invariants: :meth:`StatsReporter.record` only adds numbers under a lock (no I/O, no waiting on
the network), so it cannot slow the training loop. A daemon thread POSTs a snapshot of the
cumulative counters to ``{url}/api/jobs/{job}/stats`` every ``interval_s`` with a short
timeout. A send that fails (service down, slow, refusing) is counted in ``failed_sends`` and
never raised; because counters are cumulative, the next successful send carries everything
done meanwhile. :meth:`close` stops the thread and sends a last snapshot.

Besides the totals, each snapshot carries the rank's recent loading figures: over the last
``window_s`` seconds, the time blocked on data per step (p50/p95/p99), its sum (the exposed
data-loading time: waiting the prefetch did not hide) and the latest queue depth (batches
ready when the step asked). The window holds at most ``MAX_WINDOW_STEPS`` steps, so memory is
bounded however fast the loop runs. The service compares ranks by these (``server/ranks.py``).
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import math
import re
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from loader.jsonsafe import dumps
from loader.plan.ranks import rank_and_world

__all__ = ["StatsReporter", "queue_depth"]

log = logging.getLogger(__name__)

_JOB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_TRACKER_KEYS = ("delivered", "unique", "duplicates", "missing", "padded", "retries")
MAX_WINDOW_STEPS = 10_000
MAX_EVALS = 100
"""Validation results (one per epoch) a report carries at most: the latest ones."""


def _opener(host: str) -> urllib.request.OpenerDirector:
    """Plain opener; loopback hosts bypass any configured HTTP proxy."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


class StatsReporter:
    """Background reporter of samples, bytes, time blocked on data, epoch, rank and tracker counts.

    ``url`` is the service's base URL (``http://127.0.0.1:8000``), ``job`` a name of letters,
    digits, ``_``, ``.`` and ``-``. ``rank`` defaults to the ``RANK`` environment variable.
    The thread starts at construction; use ``close()`` or a ``with`` block to stop it.
    """

    def __init__(
        self,
        url: str,
        job: str,
        token: str | None = None,
        interval_s: float = 2.0,
        *,
        timeout_s: float = 1.0,
        rank: int | None = None,
        window_s: float = 30.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"expected an http(s) service URL, got url={url!r}")
        if not _JOB.match(job):
            raise ValueError(
                f"expected a job name of letters, digits, '_', '.', '-' (max 128), got job={job!r}"
            )
        if not interval_s > 0:
            raise ValueError(f"expected interval_s > 0, got interval_s={interval_s}")
        if not timeout_s > 0:
            raise ValueError(f"expected timeout_s > 0, got timeout_s={timeout_s}")
        if not window_s > 0:
            raise ValueError(f"expected window_s > 0, got window_s={window_s}")
        self.endpoint = f"{url.rstrip('/')}/api/jobs/{urllib.parse.quote(job)}/stats"
        self.job = job
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.window_s = float(window_s)
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._opener = _opener(parsed.hostname)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._started = time.monotonic()
        self._samples = 0
        self._bytes = 0
        self._blocked_s = 0.0
        self._epoch: int | None = None
        self._rank = rank_and_world()[0] if rank is None else int(rank)
        self._tracker: dict[str, int] = {}
        self._resumed_at: int | None = None
        self._waits: deque[tuple[float, float]] = deque(maxlen=MAX_WINDOW_STEPS)
        self._queue_depth: int | None = None
        self._evals: dict[int, dict[str, Any]] = {}
        self.sent = 0
        self.failed_sends = 0
        self.last_error: str | None = None
        self._failing = False
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="shardfeed-stats", daemon=True)
        self._thread.start()

    def record(
        self,
        samples: int = 0,
        bytes: int = 0,
        blocked_s: float = 0.0,
        epoch: int | None = None,
        rank: int | None = None,
        tracker_counts: Mapping[str, int] | Any = None,
        resumed_at_step: int | None = None,
        queue_depth: int | None = None,
    ) -> None:
        """Add ``samples``, ``bytes`` and ``blocked_s`` to the totals; set epoch, rank, queue
        depth, the tracker's current counts (a mapping or a ``loader.tracker.EpochCounts``; a
        mapping may add ``retries``, the dataset's remote-read retries so far) and the step a
        resumed job went on from when given. Call it once per step with that step's wait in
        ``blocked_s``: the window's percentiles are over these calls."""
        counts: dict[str, int] | None = None
        if tracker_counts is not None:
            raw = (
                tracker_counts.to_dict()
                if hasattr(tracker_counts, "to_dict")
                else dict(tracker_counts)
            )
            counts = {k: int(raw[k]) for k in _TRACKER_KEYS if k in raw}
            if epoch is None and "epoch" in raw:
                epoch = int(raw["epoch"])
        with self._lock:
            self._samples += int(samples)
            self._bytes += int(bytes)
            self._blocked_s += float(blocked_s)
            self._waits.append((time.monotonic(), float(blocked_s)))
            if queue_depth is not None:
                self._queue_depth = int(queue_depth)
            if epoch is not None:
                self._epoch = int(epoch)
            if rank is not None:
                self._rank = int(rank)
            if counts is not None:
                self._tracker = counts
            if resumed_at_step is not None:
                self._resumed_at = int(resumed_at_step)

    def record_eval(self, result: Mapping[str, Any]) -> None:
        """Set one epoch's validation result (``epoch``, ``top1``, ``samples``, as
        ``loader.train.validate.ValResult.to_dict()`` gives it); every send carries the latest
        ``MAX_EVALS`` epochs' results and the service shows them per epoch."""
        epoch = int(result["epoch"])
        entry = {"epoch": epoch, "top1": float(result["top1"]), "samples": int(result["samples"])}
        with self._lock:
            self._evals[epoch] = entry
            while len(self._evals) > MAX_EVALS:
                del self._evals[min(self._evals)]

    def snapshot(self) -> dict[str, Any]:
        """The JSON document the next send will carry."""
        with self._lock:
            now = time.monotonic()
            while self._waits and self._waits[0][0] < now - self.window_s:
                self._waits.popleft()
            waits = sorted(w for _, w in self._waits)
            span = min(self.window_s, now - self._started)
            if len(self._waits) == self._waits.maxlen:  # full: it covers less than window_s
                span = min(span, now - self._waits[0][0])
            return {
                "rank": self._rank,
                "samples": self._samples,
                "bytes": self._bytes,
                "blocked_s": round(self._blocked_s, 6),
                "elapsed_s": round(time.monotonic() - self._started, 6),
                "epoch": self._epoch,
                "tracker": dict(self._tracker),
                "failed_sends": self.failed_sends,
                "resumed_at_step": self._resumed_at,
                "window_s": round(span, 6),
                "window_steps": len(waits),
                "window_blocked_s": round(sum(waits), 6),
                "blocked_p50_s": _percentile(waits, 0.50),
                "blocked_p95_s": _percentile(waits, 0.95),
                "blocked_p99_s": _percentile(waits, 0.99),
                "queue_depth": self._queue_depth,
                "evals": [self._evals[e] for e in sorted(self._evals)],
            }

    def flush(self) -> bool:
        """Send one snapshot now, from the calling thread; True when the service took it."""
        with self._send_lock:
            body = dumps(self.snapshot()).encode()
            request = urllib.request.Request(
                self.endpoint, data=body, headers=self._headers, method="POST"
            )
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    response.read()
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self.failed_sends += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.log(
                    logging.DEBUG if self._failing else logging.WARNING,
                    "could not send stats to %s (%s); training goes on",
                    self.endpoint,
                    self.last_error,
                )
                self._failing = True
                return False
            if self._failing:
                log.info("stats reach %s again", self.endpoint)
            self._failing = False
            self.sent += 1
            return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread and send a last snapshot; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout if timeout is not None else self.timeout_s + 1.0)
        self.flush()

    def __enter__(self) -> StatsReporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _percentile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of an ascending list; None when it is empty."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 6)


def queue_depth(loader_or_iterator: object) -> int | None:
    """Batches ready for the next steps: unpacked batches the loader's iterator holds, plus
    items the DataLoader received from its workers and has not handed on (a group of batches
    sent together counts once). ``loader_or_iterator`` is a ``ClosingDataLoader`` with
    persistent workers or the iterator of one. None when it
    cannot tell (no worker processes, or a platform without ``Queue.qsize``).

    Reads the DataLoader iterator's private ``_data_queue`` and ``_task_info``: a figure for
    telemetry only, never used to decide anything.
    """
    ready = len(getattr(loader_or_iterator, "_pending", ()))
    inner = getattr(loader_or_iterator, "_iterator", None)
    if inner is None:
        inner = loader_or_iterator
    data_queue = getattr(inner, "_data_queue", None)
    if data_queue is None:
        return None
    try:
        ready += int(data_queue.qsize())
    except (NotImplementedError, OSError, AttributeError):
        return None
    stored = getattr(inner, "_task_info", {})
    return ready + sum(1 for info in stored.values() if len(info) == 2)
