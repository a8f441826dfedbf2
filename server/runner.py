"""Runs queued benchmarks one at a time, each in a spawned child process.

Invariants: one runner thread owns the child; at most one child is alive at a time, and only
the runner thread writes a running run's progress and final status. Other threads talk to it
through :meth:`Runner.cancel` (a flag it polls every ``poll_s``) and :meth:`Runner.wake`.
A cancelled run gets a cancel event first (the bench stops between batches and its
DataLoader shuts down); after ``cancel_grace_s`` the child's whole process group is killed.
Stopping the runner does the same with the run marked ``interrupted``; runs still queued stay
queued and run at the next start. A run past its deadline (the config's ``timeout_s``, which
the runner takes out before the child sees the config) is stopped the same way and ``failed``.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import queue as queue_module
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server._bench_child import child_main
from server.events import EventBus
from server.paths import MissingInput, PathRefused, check_bench_inputs
from server.store import RunRecord, Store

__all__ = ["Runner"]

log = logging.getLogger(__name__)

_STOP_GRACE_S = 2.0
_BULKY_EVENT_KEYS = frozenset({"result", "config"})
"""Event fields not kept as ``last_event`` nor forwarded: the final result arrives on its own."""


def _publish_run(bus: EventBus, record: RunRecord | None) -> None:
    if record is not None:
        bus.publish({"type": "benchmark", **record.to_dict(with_result=False)})


def _kill_group(process: Any) -> None:
    """SIGKILL the child's process group (it leads one), or the child alone if it does not."""
    pid = process.pid
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if process.is_alive():
            process.kill()


class Runner:
    """Background executor of the store's queued runs."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        roots: Sequence[Path],
        cancel_grace_s: float = 5.0,
        poll_s: float = 0.2,
    ) -> None:
        self.store = store
        self.bus = bus
        self.roots = list(roots)
        self.cancel_grace_s = cancel_grace_s
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._cancel_ids: set[str] = set()
        self._current: str | None = None
        self._child_pid: int | None = None
        self._thread: threading.Thread | None = None

    @property
    def current_run(self) -> str | None:
        """Id of the run whose child is alive now, if any."""
        return self._current

    @property
    def child_pid(self) -> int | None:
        return self._child_pid

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the runner was already started")
        self._thread = threading.Thread(target=self._loop, name="bench-runner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now rather than at the next poll."""
        self._wake.set()

    def cancel(self, run_id: str) -> RunRecord | None:
        """Cancel ``run_id``: a queued run at once, a running one within the grace period."""
        record = self.store.request_cancel(run_id)
        if record is not None and record.status == "running":
            with self._lock:
                self._cancel_ids.add(run_id)
            self._wake.set()
        elif record is not None and record.status == "cancelled":
            _publish_run(self.bus, record)
        return record

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the runner; a run going now is stopped and marked interrupted."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the bench runner did not stop within %.0f s", timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            run = self.store.next_queued()
            if run is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._execute(run)
            except Exception:
                log.exception("run %s failed in the runner", run.id)
                _publish_run(
                    self.bus, self.store.finish_run(run.id, "failed", error="internal error")
                )

    def _execute(self, run: RunRecord) -> None:
        config = dict(run.config)
        try:
            folder, shards = check_bench_inputs(config.get("folder"), config["shards"], self.roots)
        except (PathRefused, MissingInput, ValueError) as exc:
            _publish_run(self.bus, self.store.finish_run(run.id, "failed", error=str(exc)))
            return
        if not self.store.claim_run(run.id):
            return
        _publish_run(self.bus, self.store.get_run(run.id))
        config.update(folder=folder, shards=shards)
        timeout_s = config.pop("timeout_s", None)
        context = multiprocessing.get_context("spawn")
        events: Any = context.Queue()
        cancel = context.Event()
        child = context.Process(
            target=child_main,
            args=(config, events, cancel, os.getpid()),
            name=f"bench-{run.id}",
        )
        child.start()
        self._current, self._child_pid = run.id, child.pid
        log.info("run %s started in process %s", run.id, child.pid)
        try:
            status, result, error = self._supervise(run.id, child, events, cancel, timeout_s)
        finally:
            child.join(self.cancel_grace_s)
            _kill_group(child)
            child.join(5.0)
            events.close()
            with self._lock:
                self._cancel_ids.discard(run.id)
            self._current = self._child_pid = None
        log.info("run %s ended: %s", run.id, status)
        record = self.store.finish_run(run.id, status, result=result, error=error)
        _publish_run(self.bus, record)

    def _cancel_wanted(self, run_id: str) -> str | None:
        if self._stopping.is_set():
            return "stop"
        with self._lock:
            return "cancel" if run_id in self._cancel_ids else None

    def _supervise(
        self, run_id: str, child: Any, events: Any, cancel: Any, timeout_s: float | None
    ) -> tuple[str, dict[str, Any] | None, str | None]:
        final: dict[str, Any] | None = None
        reason: str | None = None
        deadline = math.inf
        run_deadline = math.inf if timeout_s is None else time.monotonic() + float(timeout_s)
        while final is None:
            try:
                message = events.get(timeout=self.poll_s)
            except queue_module.Empty:
                message = None
            if message is not None:
                final = self._handle(run_id, message)
                continue
            if reason is None:
                reason = self._cancel_wanted(run_id)
                if reason is None and time.monotonic() > run_deadline:
                    log.warning(
                        "run %s passed its deadline of %s s; stopping it", run_id, timeout_s
                    )
                    reason = "deadline"
                if reason is not None:
                    cancel.set()
                    grace = _STOP_GRACE_S if reason == "stop" else self.cancel_grace_s
                    deadline = time.monotonic() + grace
            elif time.monotonic() > deadline:
                log.warning("run %s did not stop within its grace period; killing it", run_id)
                _kill_group(child)
                break
            if not child.is_alive():
                final = self._drain(run_id, events)
                break
        stopped = {"stop": "interrupted", "cancel": "cancelled"}
        if final is not None and final.get("kind") == "result":
            return "done", final.get("result"), None
        if reason == "deadline":
            return "failed", None, f"the run passed its deadline (timeout_s={timeout_s}): stopped"
        if reason is not None:
            note = "the service stopped" if reason == "stop" else "cancelled by request"
            return stopped[reason], None, note
        if final is not None and final.get("kind") == "error":
            return "failed", None, str(final.get("error"))
        return "failed", None, f"the bench process exited with code {child.exitcode}"

    def _drain(self, run_id: str, events: Any) -> dict[str, Any] | None:
        """Messages still in the pipe after the child exited; returns the final one, if any."""
        while True:
            try:
                message = events.get(timeout=0.5)
            except (queue_module.Empty, OSError, EOFError):
                return None
            final = self._handle(run_id, message)
            if final is not None:
                return final

    def _handle(self, run_id: str, message: Any) -> dict[str, Any] | None:
        """Apply one child message; returns it when it is the final one."""
        if not isinstance(message, dict):
            return None
        if message.get("kind") != "event":
            return message
        event = message.get("event")
        if isinstance(event, dict):
            event = {k: v for k, v in event.items() if k not in _BULKY_EVENT_KEYS}
            progress = event.get("progress")
            if isinstance(progress, int | float) and math.isfinite(progress):
                self.store.update_progress(run_id, float(progress), event)
            self.bus.publish(
                {
                    "type": "benchmark_event",
                    "run": run_id,
                    "progress": progress,
                    "event": event,
                }
            )
        return None
