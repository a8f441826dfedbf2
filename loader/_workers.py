"""Naming the DataLoader worker that made ``make_loader(..., timeout=S)`` give up.

PyTorch's own error says only "DataLoader timed out after S seconds". The item the main
process was waiting for was handed to one worker (the iterator's ``_task_info``), so that
worker is the one stuck: on a dead mount, or a server that accepts and never answers.
"""

from __future__ import annotations

__all__ = ["WorkerTimeoutError", "stalled_worker_error", "terminate_workers"]


class WorkerTimeoutError(RuntimeError):
    """A DataLoader worker sent nothing within the loader's ``timeout``; names the worker."""


def stalled_worker_error(iterator: object, exc: BaseException) -> WorkerTimeoutError | None:
    """A ``WorkerTimeoutError`` naming the worker that ``iterator`` (a multi-process DataLoader
    iterator) was waiting for, when ``exc`` is PyTorch's timeout; else ``None``."""
    if not isinstance(exc, RuntimeError) or "timed out after" not in str(exc):
        return None
    timeout = getattr(iterator, "_timeout", None)
    pending = getattr(iterator, "_task_info", {}).get(getattr(iterator, "_rcvd_idx", None))
    worker = pending[0] if pending else None
    workers = getattr(iterator, "_workers", [])
    pid = workers[worker].pid if worker is not None and worker < len(workers) else None
    who = "an unknown worker" if worker is None else f"worker {worker} (pid {pid})"
    return WorkerTimeoutError(
        f"DataLoader {who} sent no batch within timeout={timeout} s: expected a batch, got "
        "nothing; it is stuck (a dead mount, or a server that accepts and never answers). "
        "Check the storage, or raise make_loader's timeout"
    )


def terminate_workers(iterator: object) -> None:
    """Terminate the worker processes of ``iterator`` now. After a timeout a worker is stuck
    and would not answer PyTorch's orderly shutdown, which waits 5 s for each such worker."""
    for worker in getattr(iterator, "_workers", []):
        if worker.is_alive():
            worker.terminate()
    for worker in getattr(iterator, "_workers", []):
        worker.join(5)
