"""``make_loader``: the one-liner that wraps a ``ShardDataset`` in a correctly set-up DataLoader."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader

from loader._ranges import check_int
from loader.batch import Batch
from loader.dataset import ShardDataset
from loader.sources import DatasetSource

__all__ = ["ClosingDataLoader", "WorkerInit", "make_loader"]


class WorkerInit:
    """A DataLoader ``worker_init_fn``: one OpenCV thread per worker, then the user's function.

    Each worker is its own process that decodes one image at a time, so OpenCV's own thread pool
    only oversubscribes the cores the other workers are using. Picklable (spawned workers).
    """

    def __init__(self, user_fn: Callable[[int], None] | None = None) -> None:
        self.user_fn = user_fn

    def __call__(self, worker_id: int) -> None:
        cv2.setNumThreads(1)
        if self.user_fn is not None:
            self.user_fn(worker_id)


class _ClosingIterator:
    """Wraps a DataLoader iterator; on an error from it, stops its workers before re-raising.

    PyTorch stops the workers when the iterator is collected, but the traceback of a worker's
    error puts the iterator in a reference cycle, and when the cycle collector gets to it the
    queues that carry the stop signal are already closed: each worker then holds the
    collector (and the program) for 5 s until it is killed.
    """

    def __init__(self, iterator: Iterator[Batch], loader: DataLoader[Batch]) -> None:
        self._iterator = iterator
        self._loader = loader

    def __iter__(self) -> _ClosingIterator:
        return self

    def __len__(self) -> int:
        return len(self._iterator)  # type: ignore[arg-type]

    def __next__(self) -> Batch:
        try:
            return next(self._iterator)
        except StopIteration:
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop this iteration's workers now (a persistent loader starts new ones next time)."""
        shutdown = getattr(self._iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if getattr(self._loader, "_iterator", None) is self._iterator:
            self._loader._iterator = None


class ClosingDataLoader(DataLoader[Batch]):
    """A plain ``DataLoader`` whose iterator stops its workers as soon as an error reaches the
    main process (see ``_ClosingIterator``). ``make_loader`` and ``folder_loader`` return one;
    use it for any loader whose worker errors are caught and survived (tests, benchmarks)."""

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        return _ClosingIterator(super().__iter__(), self)


def make_loader(
    source: str | os.PathLike[str] | Sequence[str] | DatasetSource | ShardDataset,
    *,
    batch_size: int = 256,
    num_workers: int = 4,
    image_size: int = 224,
    train: bool = True,
    seed: int = 0,
    prefetch_factor: int = 4,
    pin_memory: bool | None = None,
    persistent_workers: bool = True,
    multiprocessing_context: str | None = None,
    worker_init_fn: Callable[[int], None] | None = None,
    **dataset_options: Any,
) -> ClosingDataLoader:
    """A DataLoader over a ``ShardDataset`` that yields whole ``Batch`` objects.

    Batches are built in the workers (``batch_size=None`` here), memory is pinned when CUDA is
    present, workers persist across epochs and each keeps ``prefetch_factor`` batches in
    flight. ``len(loader)`` is the number of batches this rank yields per epoch. Epochs advance
    by themselves; call ``loader.dataset.set_epoch(e)`` to choose one. Each worker runs
    ``WorkerInit(worker_init_fn)`` first. ``dataset_options`` go to ``ShardDataset``; with a
    ready ``ShardDataset`` as ``source`` its own settings are used and the dataset arguments
    here (``batch_size``, ``image_size``, ``train``, ``seed``) are ignored.
    """
    check_int("num_workers", num_workers, 0)
    check_int("prefetch_factor", prefetch_factor, 1)
    if isinstance(source, ShardDataset):
        if dataset_options:
            raise ValueError(
                "expected no dataset options with a ready ShardDataset, got "
                f"{sorted(dataset_options)}: set them on the ShardDataset instead"
            )
        dataset = source
    else:
        dataset = ShardDataset(
            source,
            batch_size=batch_size,
            image_size=image_size,
            train=train,
            seed=seed,
            **dataset_options,
        )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers_only: dict[str, Any] = {}
    if num_workers > 0:
        workers_only = {
            "prefetch_factor": prefetch_factor,
            "persistent_workers": persistent_workers,
            "multiprocessing_context": multiprocessing_context,
            "worker_init_fn": WorkerInit(worker_init_fn),
        }
    return ClosingDataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **workers_only,
    )
