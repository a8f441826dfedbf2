"""Entry point of the child process that runs one benchmark for the runner.

The child puts messages on the runner's queue: ``{"kind": "event", "event": ...}`` for every
bench event, then exactly one final message, ``{"kind": "result", "result": ...}``,
``{"kind": "cancelled"}`` or ``{"kind": "error", "error": str}``. It makes itself a process
group leader so the runner can stop it together with its DataLoader workers, and it cancels
its own run when the cancel event is set or when its parent (the service) goes away.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from typing import Any

from loader.jsonsafe import json_safe

__all__ = ["child_main"]

log = logging.getLogger(__name__)

_POLL_S = 0.2


def _watch(cancel: Any, parent_pid: int, stop: threading.Event) -> None:
    while not stop.is_set():
        if cancel.wait(_POLL_S) or os.getppid() != parent_pid:
            stop.set()


def child_main(config: dict[str, Any], queue: Any, cancel: Any, parent_pid: int) -> None:
    """Run ``loader.bench.run_bench`` on ``config`` and report through ``queue``."""
    try:
        os.setpgid(0, 0)
    except OSError:
        log.debug("could not become a process group leader", exc_info=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s bench: %(message)s")
    stop = threading.Event()
    threading.Thread(
        target=_watch, args=(cancel, parent_pid, stop), name="bench-cancel", daemon=True
    ).start()
    try:
        from loader.bench import BenchCancelled, BenchConfig, run_bench

        bench_config = BenchConfig(**{**config, "modes": tuple(config["modes"])})
        bench_config.validate()
    except Exception as exc:
        queue.put({"kind": "error", "error": f"{type(exc).__name__}: {exc}"})
        return

    def on_event(event: dict[str, Any]) -> None:
        queue.put({"kind": "event", "event": json_safe(event)})

    try:
        result = run_bench(bench_config, on_event=on_event, cancel=stop)
    except BenchCancelled:
        queue.put({"kind": "cancelled"})
    except Exception as exc:
        log.debug("bench failed:\n%s", traceback.format_exc())
        queue.put({"kind": "error", "error": f"{type(exc).__name__}: {exc}"})
    else:
        queue.put({"kind": "result", "result": json_safe(result)})
    finally:
        stop.set()
