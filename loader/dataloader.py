"""``make_loader``: the one-liner that wraps a ``ShardDataset`` in a correctly set-up DataLoader."""

from __future__ import annotations

import os
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import cv2
import torch
from torch.utils.data import DataLoader

from loader._checks import check_int, check_non_negative
from loader._workers import shutdown_workers, stalled_worker_error, terminate_workers
from loader.batch import Batch, BatchGroup
from loader.dataset import ShardDataset
from loader.device.bytebatch import ByteBatch
from loader.mix.dataset import MixedDataset, as_mix
from loader.mix.source import Source
from loader.sources import DatasetSource
from loader.transforms.sample import SampleTransform
from loader.worker.pools import forget_exited_lenders

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
_Item = Batch | ByteBatch | BatchGroup


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

    With a ``ShardDataset`` it also tells the dataset what the training loop received: each batch
    is recorded as it is handed over (``ShardDataset.record``), and the epoch ends there once the
    last one has been. A consumer that holds batches before passing them on
    (``DevicePrefetcher``) calls ``defer_records()`` and records each batch itself when its own
    consumer gets it.

    PyTorch stops the workers when the iterator is collected, but the traceback of a worker's
    error puts the iterator in a reference cycle, and when the cycle collector gets to it the
    queues that carry the stop signal are already closed: each worker then holds the
    collector (and the program) for 5 s until it is killed.
    """

    def __init__(
        self,
        iterator: Iterator[_Item],
        loader: DataLoader[_Item],
        dataset: ShardDataset | None = None,
        length: int | None = None,
    ) -> None:
        self._iterator = iterator
        self._length = length
        self._loader = loader
        self._pending: deque[Batch] = deque()
        self.items_received = 0
        self._dataset = dataset
        self._deferred = False
        self._unmarked = 0
        self._exhausted = False
        if not getattr(iterator, _CLEANUP, False):
            weakref.finalize(iterator, forget_exited_lenders)
            setattr(iterator, _CLEANUP, True)

    def __iter__(self) -> _ClosingIterator:
        return self

    def __len__(self) -> int:
        """The batches this iteration yields (over a ``ShardDataset``: counted as it began)."""
        if self._length is not None:
            return self._length
        return len(self._iterator)  # type: ignore[arg-type]

    def __next__(self) -> Batch:
        if self._pending:
            return self._hand(self._pending.popleft())
        try:
            item = next(self._iterator)
        except StopIteration:
            forget_exited_lenders()
            if not self._exhausted:
                self._exhausted = True
                self._maybe_end()
            raise
        except BaseException as exc:
            stalled = stalled_worker_error(self._iterator, exc)
            if stalled is not None:
                terminate_workers(self._iterator)
            self.close()
            if stalled is not None:
                raise stalled from exc
            raise
        self.items_received += 1
        if isinstance(item, BatchGroup):
            batches = cast(tuple[Batch, ...], item.batches)
            self._pending.extend(batches[1:])
            return self._hand(batches[0])
        return self._hand(cast(Batch, item))

    def defer_records(self) -> Callable[[Batch | ByteBatch], None]:
        """Stop recording batches as they leave this iterator; the caller records each with the
        returned function when its own consumer receives it (in the order handed out)."""
        self._deferred = True
        return self._mark

    def _hand(self, batch: Batch) -> Batch:
        if self._dataset is not None:
            if self._deferred:
                self._unmarked += 1
            else:
                self._dataset.record(batch, self._loader.num_workers)
        return batch

    def _mark(self, batch: Batch | ByteBatch) -> None:
        if self._dataset is not None:
            self._dataset.record(batch, self._loader.num_workers)
            self._unmarked -= 1
            self._maybe_end()

    def _maybe_end(self) -> None:
        if self._dataset is not None and self._exhausted and self._unmarked <= 0:
            self._dataset.end_epoch()
            self._dataset = None

    def close(self) -> None:
        """Stop this iteration's workers now (a persistent loader starts new ones next time)."""
        stop_workers(self._loader, self._iterator)


def stop_workers(loader: object, iterator: object | None = None) -> None:
    """Stop the worker processes of ``iterator`` now (default: the iterator a persistent
    ``loader`` keeps between epochs), so the next ``iter(loader)`` starts new ones, and drop this
    process's maps of their buffers.

    Torch's private attributes are read in ``loader._workers`` only.
    """
    shutdown_workers(loader, iterator)
    forget_exited_lenders()


class ClosingDataLoader(DataLoader[_Item]):
    """A plain ``DataLoader`` whose iterator yields single ``Batch``es (unpacking the
    ``BatchGroup``s workers send) and stops its workers as soon as an error reaches the main
    process (see ``_ClosingIterator``). ``make_loader`` and ``folder_loader`` return one; use it
    for any loader whose worker errors are caught and survived (tests, benchmarks).

    Over a ``ShardDataset`` it is stateful in the way of ``torchdata``'s
    ``StatefulDataLoader``: ``state_dict()`` says which batches the loop has received (not the
    ones prefetched), ``load_state_dict()`` before the first ``iter()`` resumes there, with any
    number of ranks, workers and batch size (``loader.resume.state``).

    With a decoder that decodes on the device the items are ``ByteBatch``es (typed as
    ``Batch``, what every other loader yields); ``DevicePrefetcher`` takes either."""

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        dataset = self.dataset if isinstance(self.dataset, ShardDataset) else None
        length = None
        if dataset is not None:
            length = dataset.batches_left(self.num_workers)
            if self._IterableDataset_len_called is not None:
                self._IterableDataset_len_called = length
            dataset.begin_epoch(self.num_workers)
        return _ClosingIterator(super().__iter__(), self, dataset, length)

    def __len__(self) -> int:
        """Batches this rank yields in the next iteration (``ShardDataset.batches_left``): a
        whole epoch's, or after ``load_state_dict`` of a state saved mid-epoch, the rest of
        that epoch's, until it begins."""
        if isinstance(self.dataset, ShardDataset):
            length = self.dataset.batches_left(self.num_workers)
            self._IterableDataset_len_called = length  # type: ignore[assignment]
            return length
        return super().__len__()

    def state_dict(self) -> dict[str, Any]:
        """The dataset's ``state_dict`` for this loader's workers (see ``ShardDataset``)."""
        return self._shard_dataset().state_dict(self.num_workers)

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """The dataset's ``load_state_dict``: call before the first ``iter()``."""
        self._shard_dataset().load_state_dict(state)

    def _shard_dataset(self) -> ShardDataset:
        if not isinstance(self.dataset, ShardDataset):
            raise TypeError(
                f"expected a loader over a ShardDataset for state_dict, got a loader over "
                f"{type(self.dataset).__name__}"
            )
        return self.dataset


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
    source: str | os.PathLike[str] | Sequence[str | Source] | DatasetSource | ShardDataset,
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
    timeout: float = 0,
    transform: SampleTransform | None = None,
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
    ignored. After ``load_state_dict`` of a state saved mid-epoch, ``len(loader)`` is the
    number of batches left in that epoch. ``timeout`` (seconds, 0: none) is the DataLoader's: a
    worker that sends nothing for that long raises ``WorkerTimeoutError`` naming it. ``retry``,
    ``cache_dir`` and ``cache_limit`` (dataset options) govern remote reads
    (docs/architecture.md, section "Remote reads"). A list of ``Source``s (or of manifests)
    mixes datasets: ``epoch_size`` and ``exhaustion`` join the options and batches are
    ``MixedBatch``es with ``source`` (``loader.mix``; docs/architecture.md, "Mixing").

    ``transform``: ``fn(image) -> array`` run in the workers on every decoded sample, a uint8
    ``[S, S, 3]`` RGB crop (the loader's own crop, so its partial decode stays); it returns a
    NumPy array or CPU tensor and ``batch.images`` is the stack of the results. Pass
    ``transform=loader.transforms.FullImage(fn)`` to receive the full decoded image instead of
    the loader's crop. Before each call Python's ``random``, NumPy's global generator and
    torch's generator are seeded from (``seed``, epoch, sample id), so a sample's augmentation
    is the same for any number of workers and ranks and after a resume. An error in ``fn``
    raises ``TransformError`` naming the shard and member under every ``bad_samples`` policy;
    refused with ``decode="device"`` (use ``DevicePrefetcher(..., batch_transform=fn)``)
    (docs/architecture.md, "Transforms").
    """
    check_int("num_workers", num_workers, 0)
    check_non_negative("timeout", timeout)
    check_int("prefetch_factor", prefetch_factor, 1)
    if transfer_batches is not None:
        check_int("transfer_batches", transfer_batches, 1)
    if transform is not None:
        dataset_options["transform"] = transform
    if isinstance(source, ShardDataset):
        if dataset_options:
            raise ValueError(
                "expected no dataset options with a ready ShardDataset, got "
                f"{sorted(dataset_options)}: set them on the ShardDataset instead"
            )
        dataset = source
    else:
        mix = as_mix(source)  # several sources: loader.mix (docs/architecture.md, "Mixing")
        dataset = (ShardDataset if mix is None else MixedDataset)(
            source if mix is None else mix,  # type: ignore[arg-type]
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
                batch_size, dataset.image_size, dataset.decode, worker_batches=fewest
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
            "timeout": float(timeout),
        }
    return ClosingDataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **workers_only,
    )
