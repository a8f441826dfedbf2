"""``StatsReporter``: a training process's loading stats, sent to the shardfeed service.

Invariants: :meth:`StatsReporter.record` only adds numbers under a lock (no I/O, no waiting on
the network), so it cannot slow the training loop. A daemon thread POSTs a snapshot of the
cumulative counters to ``{url}/api/jobs/{job}/stats`` every ``interval_s`` with a short
timeout. A send that fails (service down, slow, refusing, or answering with a redirect, which
is never followed: the report and its bearer token go to the configured origin only, as a
POST) is counted in ``failed_sends`` and never raised; because counters are cumulative, the
next successful send carries everything done meanwhile. :meth:`close` stops the thread and
sends a last snapshot.

Besides the totals, each snapshot carries the rank's recent loading figures: over the last
``window_s`` seconds, the time blocked on data per step (p50/p95/p99), its sum (the exposed
data-loading time: waiting the prefetch did not hide) and the latest queue depth (batches
ready when the step asked). The window holds at most ``MAX_WINDOW_STEPS`` steps, so memory is
bounded however fast the loop runs. The service compares ranks by these (``server/ranks.py``).

With ``num_samples``, the reporter also keeps the ids it was given this epoch (``record(ids=,
padded=)``) and sends them as a compressed bitmap (``coverage``) with the epoch's delivered and
padded counts. Counts summed over ranks cannot say whether two ranks read the same samples;
the service takes the union of every reporter's bitmap instead (docs/architecture.md,
"Service"). Each reporter sends a random ``reporter`` id, so two processes that claim the same
rank are told apart rather than overwriting each other.

With device decode, each snapshot also carries ``decode``: the rank's rows by where they were
decoded so far (``DevicePrefetcher.decode_counts``), which the service shows per job.

With a mix, ``record(source_counts=)`` sets the per-source counts each snapshot carries
(``sources``, checked by ``loader.mix.report.source_report``) and ``sources_merged`` says whether
they are this process's own (``sources_scope: "rank"``) or over every rank (``"merged"``).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import logging
import re
import secrets
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from loader._workers import queued_items
from loader.jsonsafe import dumps
from loader.mix.report import source_report
from loader.percentile import percentile
from loader.plan.ranks import rank_and_world
from loader.tracker import DuplicateTracker, pack_seen

if TYPE_CHECKING:
    import torch
from loader.remote.redact import redact

__all__ = ["StatsReporter", "queue_depth"]

log = logging.getLogger(__name__)

_JOB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_TRACKER_KEYS = ("delivered", "unique", "duplicates", "missing", "padded", "retries")
MAX_WINDOW_STEPS = 10_000
MAX_EVALS = 100
"""Validation results (one per epoch) a report carries at most: the latest ones."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an ``HTTPError`` (a failed send), never a request to the new location."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(host: str) -> urllib.request.OpenerDirector:
    """Opener that follows no redirect; loopback hosts bypass any configured HTTP proxy."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(_NoRedirect)


class StatsReporter:
    """Background reporter of samples, bytes, time blocked on data, epoch, rank and tracker counts.

    ``url`` is the service's base URL (``http://127.0.0.1:8000``), ``job`` a name of letters,
    digits, ``_``, ``.`` and ``-``. ``rank`` defaults to the ``RANK`` environment variable.
    ``num_samples`` (the dataset's) turns on the per-epoch id bitmap. ``clock`` times the
    window (tests inject one). The thread starts at construction; use ``close()`` or a
    ``with`` block to stop it.
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
        num_samples: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"expected an http(s) service URL, got url={redact(url)!r}")
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
        self._clock = clock
        self._started = clock()
        self.reporter_id = secrets.token_hex(8)
        self._ids = None if num_samples is None else DuplicateTracker(num_samples)
        self._samples = 0
        self._bytes = 0
        self._blocked_s = 0.0
        self._epoch: int | None = None
        self._rank = rank_and_world()[0] if rank is None else int(rank)
        self._tracker: dict[str, int] = {}
        self._resumed_at: int | None = None
        self._waits: deque[tuple[float, float]] = deque(maxlen=MAX_WINDOW_STEPS)
        self._queue_depth: int | None = None
        self._decode: dict[str, int] = {}
        self._sources: dict[str, dict[str, int]] = {}
        self._sources_merged = False
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
        ids: np.ndarray | torch.Tensor | None = None,
        padded: np.ndarray | torch.Tensor | None = None,
        decode_counts: Mapping[str, int] | None = None,
        source_counts: Mapping[str, Any] | None = None,
        sources_merged: bool = False,
    ) -> None:
        """Add ``samples``, ``bytes`` and ``blocked_s`` to the totals; set epoch, rank, queue
        depth, the tracker's current counts (a mapping or a ``loader.tracker.EpochCounts``; a
        mapping may add ``retries``, the dataset's remote-read retries so far) and the step a
        resumed job went on from and the device decoder's row counts so far
        (``DevicePrefetcher.decode_counts``) when given. Call it once per step with that step's
        wait in ``blocked_s``: the window's percentiles are over these calls. ``ids`` and ``padded``
        (the batch's) go into this epoch's bitmap when the reporter has ``num_samples``; a new
        ``epoch`` starts a new bitmap. ``ValueError`` for ids without ``num_samples`` or
        outside ``[0, num_samples)``. ``source_counts`` (a mix's counts per source name,
        ``loader.mix.report.named_counts(tracker.counts(), sources)``) replaces the last ones
        sent, ``sources_merged`` when they are over every rank; ``ValueError`` for counts
        ``source_report`` refuses."""
        counts: dict[str, int] | None = None
        sources = None if source_counts is None else source_report(source_counts)
        if tracker_counts is not None:
            raw = (
                tracker_counts.to_dict()
                if hasattr(tracker_counts, "to_dict")
                else dict(tracker_counts)
            )
            counts = {k: int(raw[k]) for k in _TRACKER_KEYS if k in raw}
            if epoch is None and "epoch" in raw:
                epoch = int(raw["epoch"])
        if ids is not None and self._ids is None:
            raise ValueError("expected StatsReporter(num_samples=...) to record ids, got none")
        with self._lock:
            if self._ids is not None and epoch is not None and epoch != self._ids.epoch:
                self._ids.start_epoch(int(epoch))
            if ids is not None and self._ids is not None:
                self._ids.update(ids, padded)
            self._samples += int(samples)
            self._bytes += int(bytes)
            self._blocked_s += float(blocked_s)
            self._waits.append((self._clock(), float(blocked_s)))
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
            if decode_counts is not None:
                self._decode = {str(k): int(v) for k, v in decode_counts.items()}
            if sources is not None:
                self._sources, self._sources_merged = sources, bool(sources_merged)

    def resume_epoch(self, tracker: DuplicateTracker) -> None:
        """Start this reporter's bitmap from a restored tracker (its current epoch), so a
        resumed job's reports cover both sides of the stop."""
        if self._ids is None:
            raise ValueError("expected StatsReporter(num_samples=...) to resume ids, got none")
        with self._lock:
            self._ids.load_state_dict(tracker.state_dict())

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
        coverage: dict[str, Any] | None = None
        with self._lock:
            if self._ids is not None:
                counts, seen = self._ids.counts(), self._ids.seen()
                coverage = {
                    "epoch": counts.epoch,
                    "num_samples": self._ids.num_samples,
                    "delivered": counts.delivered,
                    "padded": counts.padded,
                }
            now = self._clock()
            while self._waits and self._waits[0][0] < now - self.window_s:
                self._waits.popleft()
            waits = sorted(w for _, w in self._waits)
            span = min(self.window_s, now - self._started)
            if len(self._waits) == self._waits.maxlen:  # full: it covers less than window_s
                span = min(span, now - self._waits[0][0])
            doc: dict[str, Any] = {
                "reporter": self.reporter_id,
                "rank": self._rank,
                "samples": self._samples,
                "bytes": self._bytes,
                "blocked_s": round(self._blocked_s, 6),
                "elapsed_s": round(now - self._started, 6),
                "epoch": self._epoch,
                "tracker": dict(self._tracker),
                "failed_sends": self.failed_sends,
                "resumed_at_step": self._resumed_at,
                "window_s": round(span, 6),
                "window_steps": len(waits),
                "window_blocked_s": round(sum(waits), 6),
                "blocked_p50_s": _rounded(percentile(waits, 50)),
                "blocked_p95_s": _rounded(percentile(waits, 95)),
                "blocked_p99_s": _rounded(percentile(waits, 99)),
                "queue_depth": self._queue_depth,
                "decode": dict(self._decode),
                "sources": {name: dict(row) for name, row in self._sources.items()},
                "sources_scope": "merged" if self._sources_merged else "rank",
                "evals": [self._evals[e] for e in sorted(self._evals)],
            }
        if coverage is not None:
            coverage["seen"] = base64.b64encode(pack_seen(seen)).decode("ascii")
            doc["coverage"] = coverage
        return doc

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
                self.last_error = redact(f"{type(exc).__name__}: {exc}")
                log.log(
                    logging.DEBUG if self._failing else logging.WARNING,
                    "could not send stats to %s (%s); training goes on",
                    redact(self.endpoint),
                    self.last_error,
                )
                self._failing = True
                return False
            if self._failing:
                log.info("stats reach %s again", redact(self.endpoint))
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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def queue_depth(loader_or_iterator: object) -> int | None:
    """Batches ready for the next steps: unpacked batches the loader's iterator holds, plus
    items the DataLoader received from its workers and has not handed on (a group of batches
    sent together counts once). ``loader_or_iterator`` is a ``ClosingDataLoader`` with
    persistent workers or the iterator of one. None when it
    cannot tell (no worker processes, or a platform without ``Queue.qsize``).

    A figure for telemetry only, never used to decide anything (torch's private attributes are
    read in ``loader._workers``).
    """
    ready = len(getattr(loader_or_iterator, "_pending", ()))
    inner = getattr(loader_or_iterator, "_iterator", None)
    queued = queued_items(loader_or_iterator if inner is None else inner)
    return None if queued is None else ready + queued
