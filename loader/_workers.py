"""The DataLoader's worker processes, seen through torch's private iterator attributes.

This is the one module that reads torch ``DataLoader`` internals (``TORCH_PRIVATE``);
everything else asks it. ``check_torch_internals`` says which of them a torch release no
longer has (``tests/loader/test_workers.py`` runs it against the installed torch), so a
rename fails one test with a clear message instead of degrading a feature silently.

What it serves: naming the worker that made ``make_loader(..., timeout=S)`` give up
(PyTorch's own error says only "DataLoader timed out after S seconds"; the item the main
process was waiting for was handed to one worker, the iterator's ``_task_info``, so that worker
is the stuck one), terminating and shutting workers down, and counting the items queued for
the main process (telemetry only, never used to decide anything).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "TORCH_PRIVATE",
    "TorchInternalsError",
    "WorkerTimeoutError",
    "check_torch_internals",
    "loader_iterator",
    "queued_items",
    "shutdown_workers",
    "stalled_worker_error",
    "terminate_workers",
]

# attribute -> where it lives; what this module reads of torch's DataLoader.
TORCH_PRIVATE: Final = {
    "_iterator": "DataLoader (the iterator kept between epochs with persistent workers)",
    "_timeout": "_MultiProcessingDataLoaderIter",
    "_task_info": "_MultiProcessingDataLoaderIter (task index -> (worker,) or (worker, data))",
    "_rcvd_idx": "_MultiProcessingDataLoaderIter (the task index awaited next)",
    "_workers": "_MultiProcessingDataLoaderIter (the worker processes)",
    "_data_queue": "_MultiProcessingDataLoaderIter (results on their way to the main process)",
    "_shutdown_workers": "_MultiProcessingDataLoaderIter (the orderly shutdown)",
}


class WorkerTimeoutError(RuntimeError):
    """A DataLoader worker sent nothing within the loader's ``timeout``; names the worker."""


class TorchInternalsError(RuntimeError):
    """The installed torch lacks a DataLoader attribute this module reads."""


def check_torch_internals(loader: object, iterator: object) -> None:
    """Raise ``TorchInternalsError`` naming every ``TORCH_PRIVATE`` attribute that ``loader``
    (a ``DataLoader`` with persistent workers, iterated once) or ``iterator`` (its
    multi-process iterator) lacks."""
    missing = [
        f"{name} ({where})"
        for name, where in TORCH_PRIVATE.items()
        if not hasattr(loader if name == "_iterator" else iterator, name)
    ]
    if missing:
        import torch

        raise TorchInternalsError(
            f"expected torch's DataLoader to have {', '.join(missing)}; torch "
            f"{torch.__version__} renamed or removed them: update loader/_workers.py"
        )


def loader_iterator(loader: object) -> object | None:
    """The iterator a persistent ``loader`` keeps between epochs (``None``: none)."""
    return getattr(loader, "_iterator", None)


def shutdown_workers(loader: object, iterator: object | None) -> None:
    """Shut ``iterator``'s workers down in torch's orderly way (default: ``loader``'s kept
    iterator), and make ``loader`` forget it so the next ``iter()`` starts new workers."""
    if iterator is None:
        iterator = loader_iterator(loader)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if iterator is not None and loader_iterator(loader) is iterator:
        loader._iterator = None  # type: ignore[attr-defined]


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


def queued_items(iterator: object) -> int | None:
    """Items the DataLoader ``iterator`` received from its workers and has not handed on (a
    group of batches sent together counts once). ``None`` when it cannot tell (no worker
    processes, or a platform without ``Queue.qsize``)."""
    data_queue = getattr(iterator, "_data_queue", None)
    if data_queue is None:
        return None
    try:
        ready = int(data_queue.qsize())
    except (NotImplementedError, OSError, AttributeError):
        return None
    stored = getattr(iterator, "_task_info", {})
    return ready + sum(1 for info in stored.values() if len(info) == 2)
