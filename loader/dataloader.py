"""``make_loader``: the one-liner that wraps a ``ShardDataset`` in a correctly set-up DataLoader."""

from __future__ import annotations

import os
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader

from loader._ranges import check_int
from loader._recycle import forget_exited_lenders
from loader.batch import Batch, BatchGroup
from loader.dataset import ShardDataset
from loader.sources import DatasetSource

__all__ = [
    "PREFETCH_FACTOR",
    "ClosingDataLoader",
    "WorkerInit",
    "make_loader",
    "stop_workers",
    "transfer_batches_for",
]

_CLEANUP = "_shardfeed_forgets_lenders"
TRANSFER_SAMPLES = 1024
TRANSFER_DECODED = 256
MAX_TRANSFER_BATCHES = 16
TRANSFER_BYTES = 32 << 20
MIN_ITEMS_PER_EPOCH = 2
PREFETCH_FACTOR = 4


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
    """Wraps a DataLoader iterator: hands on the batches of each ``BatchGroup`` one at a time,
    and on an error from it stops its workers before re-raising. ``items_received`` counts the
    DataLoader items taken so far (a ``BatchGroup`` once, however many batches it held). Once the
    DataLoader's own iterator is collected (its workers stopped), this process drops its maps of
    their buffers (``forget_exited_lenders``), also after an epoch left early.

    PyTorch stops the workers when the iterator is collected, but the traceback of a worker's
    error puts the iterator in a reference cycle, and when the cycle collector gets to it the
    queues that carry the stop signal are already closed: each worker then holds the
    collector (and the program) for 5 s until it is killed.
    """

    def __init__(
        self, iterator: Iterator[Batch | BatchGroup], loader: DataLoader[Batch | BatchGroup]
    ) -> None:
        self._iterator = iterator
        self._loader = loader
        self._pending: deque[Batch] = deque()
        self.items_received = 0
        if not getattr(iterator, _CLEANUP, False):
            weakref.finalize(iterator, forget_exited_lenders)
            setattr(iterator, _CLEANUP, True)

    def __iter__(self) -> _ClosingIterator:
        return self

    def __len__(self) -> int:
        return len(self._iterator)  # type: ignore[arg-type]

    def __next__(self) -> Batch:
        if self._pending:
            return self._pending.popleft()
        try:
            item = next(self._iterator)
        except StopIteration:
            forget_exited_lenders()
            raise
        except BaseException:
            self.close()
            raise
        self.items_received += 1
        if isinstance(item, BatchGroup):
            self._pending.extend(item.batches[1:])
            return item.batches[0]
        return item

    def close(self) -> None:
        """Stop this iteration's workers now (a persistent loader starts new ones next time)."""
        stop_workers(self._loader, self._iterator)


def stop_workers(loader: object, iterator: object | None = None) -> None:
    """Stop the worker processes of ``iterator`` now (default: the iterator a persistent
    ``loader`` keeps between epochs), so the next ``iter(loader)`` starts new ones, and drop this
    process's maps of their buffers.

    The one place that reaches into the DataLoader's private ``_iterator`` and
    ``_shutdown_workers``; anything that is not a DataLoader with workers is left alone.
    """
    if iterator is None:
        iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if iterator is not None and getattr(loader, "_iterator", None) is iterator:
        loader._iterator = None  # type: ignore[attr-defined]
    forget_exited_lenders()


class ClosingDataLoader(DataLoader[Batch | BatchGroup]):
    """A plain ``DataLoader`` whose iterator yields single ``Batch``es (unpacking the
    ``BatchGroup``s workers send) and stops its workers as soon as an error reaches the main
    process (see ``_ClosingIterator``). ``make_loader`` and ``folder_loader`` return one; use it
    for any loader whose worker errors are caught and survived (tests, benchmarks)."""

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        with _opencv_pool_stopped(self.num_workers > 0):
            inner = super().__iter__()
        return _ClosingIterator(inner, self)


@contextmanager
def _opencv_pool_stopped(forking: bool) -> Iterator[None]:
    """Run the body (which forks the DataLoader workers) with this process's OpenCV thread
    pool at one thread, then restore it. A worker forked while the pool's threads hold its
    lock (right after the main process used OpenCV) deadlocks in ``WorkerInit``'s
    ``cv2.setNumThreads(1)``: a third of the time here."""
    if not forking:
        yield
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def transfer_batches_for(
    batch_size: int, image_size: int, decode: bool = True, worker_batches: int | None = None
) -> int:
    """How many batches ``make_loader`` sends per DataLoader item when not told.

    Enough to carry about 1,024 samples with decoding off (``TRANSFER_SAMPLES``: a batch is a
    few hundred bytes and the per-item cost is all there is), or 256 decoded samples
    (``TRANSFER_DECODED``: a group is yielded only once its last batch is decoded, so a larger
    one would delay the first batch), at most ``MAX_TRANSFER_BATCHES`` batches, and with the
    images of one item within ``TRANSFER_BYTES``: three decoded ``[64, 224, 224, 3]`` batches
    (9.6 MB each) travel together, a ``[256, 224, 224, 3]`` one travels alone. With
    ``worker_batches`` (the fewest batches a worker yields per epoch), a group holds at most
    half of them: every worker hands over at least two items per epoch, so the main process
    works through one while the worker builds the next.
    """
    check_int("batch_size", batch_size, 1)
    check_int("image_size", image_size, 0)
    pixels = decode and image_size > 0
    samples = TRANSFER_DECODED if pixels else TRANSFER_SAMPLES
    limit = MAX_TRANSFER_BATCHES
    if worker_batches is not None:
        check_int("worker_batches", worker_batches, 0)
        limit = min(limit, max(1, worker_batches // MIN_ITEMS_PER_EPOCH))
    by_samples = min(limit, -(-samples // batch_size))
    if not pixels:
        return by_samples
    return max(1, min(by_samples, TRANSFER_BYTES // (batch_size * image_size * image_size * 3)))


def _items_in_flight(prefetch_batches: int, transfer_batches: int) -> int:
    """DataLoader items each worker keeps in flight for about ``prefetch_batches`` batches.

    Never fewer than two when items are groups: the DataLoader hands items on in order, so with
    one item in flight a worker that finishes before the worker ahead of it stays idle until the
    main process gets to its item (with 16-batch groups this halved the rate here).
    """
    if transfer_batches == 1:
        return prefetch_batches
    return max(2, -(-prefetch_batches // transfer_batches))


def make_loader(
    source: str | os.PathLike[str] | Sequence[str] | DatasetSource | ShardDataset,
    *,
    batch_size: int = 256,
    num_workers: int = 4,
    image_size: int = 224,
    train: bool = True,
    seed: int = 0,
    prefetch_factor: int = PREFETCH_FACTOR,
    transfer_batches: int | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool = True,
    multiprocessing_context: str | None = None,
    worker_init_fn: Callable[[int], None] | None = None,
    **dataset_options: Any,
) -> ClosingDataLoader:
    """A DataLoader over a ``ShardDataset`` that yields whole ``Batch`` objects.

    Batches are built in the workers (``batch_size=None`` here), memory is pinned when CUDA is
    present, workers persist across epochs and each keeps about ``prefetch_factor`` batches in
    flight. Workers send ``transfer_batches`` batches per DataLoader item (``None``:
    ``transfer_batches_for``; the iterator hands them on one by one), so the main process pays
    the per-item cost once per several batches; a ready ``ShardDataset`` keeps its own
    ``transfer_batches``. ``len(loader)`` is the number of batches this rank yields per epoch.
    Epochs advance by themselves; call ``loader.dataset.set_epoch(e)`` to choose one. Each
    worker runs ``WorkerInit(worker_init_fn)`` first. ``dataset_options`` go to
    ``ShardDataset``; with a ready ``ShardDataset`` as ``source`` its own settings are used and
    the dataset arguments here (``batch_size``, ``image_size``, ``train``, ``seed``) are
    ignored.
    """
    check_int("num_workers", num_workers, 0)
    check_int("prefetch_factor", prefetch_factor, 1)
    if transfer_batches is not None:
        check_int("transfer_batches", transfer_batches, 1)
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
            transfer_batches=transfer_batches or 1,
            **dataset_options,
        )
        if transfer_batches is None and num_workers:
            plans = dataset.epoch_plan(0, num_workers)
            fewest = min((p.num_batches for p in plans if p.num_batches), default=0)
            dataset.transfer_batches = transfer_batches_for(
                batch_size, image_size, dataset.decode, worker_batches=fewest
            )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers_only: dict[str, Any] = {}
    if num_workers > 0:
        workers_only = {
            "prefetch_factor": _items_in_flight(prefetch_factor, dataset.transfer_batches),
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
