"""GPU delivery: side-stream copies, normalised on the device (docs/architecture.md, "Loader").

``DevicePrefetcher`` wraps any iterable of ``Batch`` (a DataLoader over the loader's dataset,
typically) and yields ``DeviceBatch``: float32 ``[B, 3, H, W]`` images normalised by
``mean``/``std``, in channels_last memory format by default. It works one batch ahead: while the
consumer computes on batch ``k``, batch ``k + 1`` is already being copied and converted.

On CUDA, for each batch, in one helper thread while the consumer trains on the previous batch
(``loader.device._overlap``, which states the order and its invariants):

1. the host images are pinned (skipped when the DataLoader's ``pin_memory`` already did);
2. on a side stream, the uint8 NHWC images (plus labels and padding flags) are copied with
   ``non_blocking=True`` and converted to normalised float NCHW on the device, and an event is
   recorded after the last kernel;
3. when the consumer asks for the batch, its current stream waits on that event, and every
   device tensor of the batch is ``record_stream``-ed on the consumer stream.

Invariants. Side-stream work for a batch is complete, from the consumer stream's point of view,
before any kernel the consumer enqueues after receiving it; the consumer's thread never blocks
on it (it waits only for a batch the helper has not finished preparing: waiting for data). The
device tensors were allocated on the side stream; ``record_stream`` keeps the caching allocator
from handing their memory to the side stream again until the consumer stream's work queued up to
the batch's release has finished. The pinned host tensors are held by the prefetcher until the
batch is handed over, and the CUDA caching host allocator (behind ``Tensor.pin_memory()``, which
the DataLoader uses too) does not reuse a pinned block before the copies that read it have
completed; host memory pinned by other means must outlive the copy by itself. The
``mean``/``std`` constants are on the device before the first batch (the constructor
synchronises). The prefetcher never writes into a host batch it is given. ``ids`` and ``nbytes``
stay on the host: they feed the delivery counters, which run on the CPU, and moving them would
cost a device-to-host synchronisation later. So do ``source`` and ``position``, the two columns a
mixed batch adds (``loader.mix.batch.MixedBatch``; ``None`` for a batch of one dataset): the
``DeviceBatch`` carries them as they came.

Without CUDA the same conversion runs on the CPU, without streams or pinning.

Working one batch ahead, the prefetcher has taken batch ``k + 1`` from the loader when the
consumer gets batch ``k``. A loader's iterator that records what the training loop received
(``ClosingDataLoader``'s, for resuming) offers ``defer_records()``; the prefetcher then records
each batch as it hands it over, so a prefetched batch is never counted as received. It records
the host batch as the loader made it (a ``MixedBatch`` stays one, so a mix records its rows'
``position``s, what its resume counts).

Images from a per-sample transform (``loader.transforms``) may be uint8 ``[B, H, W, 3]`` or
``[B, 3, H, W]`` (normalised as above) or floating ``[B, 3, H, W]`` (a transform that returns
floats owns its scaling and normalisation: they are only moved and made float32).
``batch_transform=fn`` then runs ``fn(images, labels)`` on the device, seeded per batch from
(``seed``, epoch, the batch's first source and id) (``loader.transforms.batch``;
docs/architecture.md, "Transforms"); its labels may be soft ``[B, C]``.

Byte batches (``loader.device.bytebatch``, ``decode="device"``): the prefetcher hands each
``ByteBatch`` to its decoder's ``decode_batch`` (by default the loader's dataset's decoder;
``loader.device.decoder``), on the side stream on CUDA, and converts the uint8 batch that comes
back like any other. Samples decoded nowhere meet the dataset's bad-sample policy here
(``loader.badsamples``; the budget counts the skips of one pass, that is one epoch, in this
process): ``"raise"`` raises
``BadSampleError``; ``"skip"`` warns and replaces the row with a copy of the batch's first good
sample marked ``padded``, as a worker does for a sample it cannot decode, so delivery counts are
those of the CPU path. ``decode_counts`` says where the rows were decoded, over the prefetcher's
life; at the end of a pass one warning is logged when more than ``FALLBACK_WARN_FRACTION`` of
them were not decoded on the device, so an all-CPU run is never silent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from typing import NamedTuple

import torch

from loader._checks import check_int
from loader.badsamples import BadSampleError, BadSamplePolicy, SkipCounter
from loader.batch import Batch
from loader.device._overlap import StreamOps, TorchStreams, overlapped
from loader.device.bytebatch import ByteBatch
from loader.device.decoder import BatchDecoder, DecodeCounts, DecodedBatch
from loader.transforms.batch import BatchTransform, run_batch_transform

__all__ = ["FALLBACK_WARN_FRACTION", "DeviceBatch", "DevicePrefetcher", "resolve_device"]

log = logging.getLogger("shardfeed.loader")

FALLBACK_WARN_FRACTION = 0.01
"""More than this share of byte-batch rows decoded off the device draws one warning."""


class DeviceBatch(NamedTuple):
    """A batch ready for the model.

    ``images`` float32 ``[B, 3, H, W]`` normalised, on the device (channels_last unless the
    prefetcher was told otherwise); ``labels`` int64 and ``padded`` bool on the device; ``ids``
    and ``nbytes`` int64 on the host. For a batch of a mix (``loader.mix``), ``source`` (each
    row's index into the loader's sources; ``ids`` are ids within it) and ``position`` (each
    row's position in the mixed epoch), int64 on the host; ``None`` otherwise. The first five
    fields keep their places.
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    padded: torch.Tensor
    nbytes: torch.Tensor
    source: torch.Tensor | None = None
    position: torch.Tensor | None = None


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` means CUDA when available, else the CPU; a CUDA device must be available."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"expected a device this machine has, got device={device!r} without CUDA")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"expected device 'auto', 'cpu' or 'cuda[:N]', got device={device!r}")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _channel_constants(name: str, values: Sequence[float], device: torch.device) -> torch.Tensor:
    if len(values) != 3:
        raise ValueError(f"expected 3 per-channel values for {name}, got {name}={values!r}")
    tensor = torch.tensor([255.0 * v for v in values], dtype=torch.float32)
    if name == "std" and bool((tensor <= 0).any()):
        raise ValueError(f"expected positive std values, got std={values!r}")
    return tensor.view(1, 3, 1, 1).to(device)


class DevicePrefetcher:
    """Iterates ``loader`` and yields each ``Batch`` (or ``ByteBatch``) as a ``DeviceBatch`` on
    ``device``.

    Order is preserved and nothing is dropped. Each ``iter()`` starts a new pass over
    ``loader`` (so a DataLoader epoch per ``iter()``). Not thread-safe: consume from one thread.
    ``decoder`` decodes byte batches (``None``: ``loader.dataset.decoder`` when it decodes on
    the device); the bad-sample policy is ``loader.dataset``'s when it has one, else ``"skip"``
    with a budget of 100. ``batch_transform`` (see the module doc) is seeded with ``seed``
    (``None``: ``loader.dataset.seed``, else 0) and the epoch ``loader.dataset.next_epoch``
    names as each pass starts (without a dataset: the pass's number).
    """

    def __init__(
        self,
        loader: Iterable[Batch] | Iterable[ByteBatch] | Iterable[Batch | ByteBatch],
        device: str | torch.device = "auto",
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        channels_last: bool = True,
        decoder: BatchDecoder | None = None,
        batch_transform: BatchTransform | None = None,
        seed: int | None = None,
    ) -> None:
        self.loader = loader
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self._mean = _channel_constants("mean", mean, self.device)
        self._std = _channel_constants("std", std, self.device)
        dataset = getattr(loader, "dataset", None)
        own = getattr(dataset, "decoder", None)
        if decoder is None and getattr(own, "decodes_on_device", False):
            decoder = own
        self.decoder = decoder
        self.bad_sample_policy = BadSamplePolicy.of(dataset)
        self._locate: Callable[[int], str] | None = getattr(dataset, "locate", None)
        self._skips: SkipCounter = self.bad_sample_policy.counter()
        if batch_transform is not None and not callable(batch_transform):
            raise ValueError(f"expected a callable batch_transform, got {batch_transform!r}")
        self.batch_transform = batch_transform
        self.seed = check_int("seed", getattr(dataset, "seed", 0) if seed is None else seed, 0)
        self._epoch, self._passes = 0, 0
        self._streams: StreamOps = TorchStreams()
        self._overlap = self.device.type == "cuda"  # helper thread and side stream
        self._counts = DecodeCounts()
        self._counts_lock = threading.Lock()
        self._warned = False
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def __len__(self) -> int:
        """The loader's length; ``TypeError`` when the loader has none."""
        if not isinstance(self.loader, Sized):
            raise TypeError(f"expected a loader with a length, got {type(self.loader).__name__}")
        return len(self.loader)

    def __iter__(self) -> Iterator[DeviceBatch]:
        self._skips = self.bad_sample_policy.counter()
        epoch = getattr(getattr(self.loader, "dataset", None), "next_epoch", None)
        self._epoch = epoch if isinstance(epoch, int) else self._passes
        self._passes += 1
        try:
            if self._overlap:
                yield from self._iter_cuda()
            else:
                yield from (self._convert(self._decoded(item)) for item in self.loader)
        finally:
            self._warn_fallbacks()

    def _decoded(self, item: Batch | ByteBatch) -> Batch:
        """A ``Batch`` as it is; a ``ByteBatch`` decoded on the device, bad samples handled."""
        if not isinstance(item, ByteBatch):
            return _as_batch(item)
        if self.decoder is None:
            raise ValueError(
                "expected a decoder for byte batches (decode='device'), got none: pass "
                "DevicePrefetcher(..., decoder=...) or a loader whose dataset has one"
            )
        decoded = self.decoder.decode_batch(item, self.device)
        self._count(decoded.counts)
        batch = Batch(decoded.images, item.labels, item.ids, item.padded, item.nbytes)
        return self._bad_samples(batch, decoded) if decoded.failures else batch

    def _bad_samples(self, batch: Batch, decoded: DecodedBatch) -> Batch:
        """Apply the bad-sample policy to the rows decoded nowhere (see the module doc)."""
        for row, reason in sorted(decoded.failures.items()):
            gid = int(batch.ids[row])
            where = self._locate(gid) if self._locate is not None else f"sample id {gid}"
            self._skips.bad(
                f"{where} (decoded neither by the device decoder on {self.device} nor by its "
                "CPU fallback)",
                reason,
            )
        good = [r for r in range(len(batch.ids)) if r not in decoded.failures]
        if not good:
            raise BadSampleError(
                f"every sample of a batch was bad (ids {batch.ids.tolist()}): nothing to fill "
                "the batch with"
            )
        rows = torch.tensor(sorted(decoded.failures), dtype=torch.int64)
        src = good[0]
        labels, ids, padded, nbytes = (t.clone() for t in batch[1:])
        images = batch.images
        images[rows.to(images.device)] = images[src].clone()
        labels[rows], ids[rows] = int(labels[src]), int(ids[src])
        padded[rows], nbytes[rows] = True, 0
        return Batch(images, labels, ids, padded, nbytes)

    def _convert(self, batch: Batch) -> DeviceBatch:
        """Copy ``batch`` to the device (non-blocking), normalise uint8 images and run the
        batch transform; runs on the current stream."""
        source = batch.images
        uint8 = source.dtype == torch.uint8
        nhwc = source.dim() == 4 and source.shape[3] == 3 and uint8
        if not (nhwc or (source.dim() == 4 and source.shape[1] == 3)) or not (
            uint8 or source.is_floating_point()
        ):
            raise ValueError(
                f"expected uint8 images [B, H, W, 3] or [B, 3, H, W], or float [B, 3, H, W], got "
                f"dtype={source.dtype} shape={tuple(source.shape)}"
            )
        pixels = source.to(self.device, non_blocking=True)
        if nhwc:
            pixels = pixels.permute(0, 3, 1, 2)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        images = pixels.to(dtype=torch.float32, memory_format=layout)
        if uint8:
            images.sub_(self._mean).div_(self._std)
        labels = batch.labels.to(self.device, non_blocking=True)
        if self.batch_transform is not None:
            images, labels = run_batch_transform(
                self.batch_transform,
                images,
                labels,
                batch.ids,
                seed=self.seed,
                epoch=self._epoch,
                device=self.device,
                sources=getattr(batch, "source", None),
            )
        return DeviceBatch(
            images,
            labels,
            batch.ids,
            batch.padded.to(self.device, non_blocking=True),
            batch.nbytes,
            getattr(batch, "source", None),
            getattr(batch, "position", None),
        )

    def _iter_cuda(self) -> Iterator[DeviceBatch]:
        batches = iter(self.loader)
        defer = getattr(batches, "defer_records", None)
        received: Callable[[Batch | ByteBatch], None] | None = defer() if callable(defer) else None
        return overlapped(
            batches,
            self._prepare,
            ops=self._streams,
            device=self.device,
            device_tensors=lambda ready: (ready.images, ready.labels, ready.padded),
            handed_over=received,
        )

    def _prepare(self, item: Batch | ByteBatch) -> tuple[Batch | ByteBatch, DeviceBatch]:
        """Pin, decode, copy and convert one batch (``overlapped`` runs it in its helper thread,
        on the side stream)."""
        host: Batch | ByteBatch
        if isinstance(item, ByteBatch):
            host = item._replace(labels=_pinned(item.labels), padded=_pinned(item.padded))
        else:
            batch = _as_batch(item)
            host = batch._replace(
                images=_pinned(batch.images),
                labels=_pinned(batch.labels),
                padded=_pinned(batch.padded),
            )
        return host, self._convert(self._decoded(host))

    @property
    def decode_counts(self) -> dict[str, int]:
        """The rows of byte batches this prefetcher has handed to its decoder, over its life, by
        where they were decoded: ``"device"``, on the CPU by reason (``"orientation"``,
        ``"format"``, ``"error"``: the device decoder refused it) or nowhere (``"failed"``).
        Each row is counted once (``loader.device.decoder.ROW_COUNTS``); all zero for batches
        decoded in the workers."""
        with self._counts_lock:
            return self._counts.rows()

    def _count(self, counts: DecodeCounts) -> None:
        with self._counts_lock:
            self._counts.add(counts)

    def _warn_fallbacks(self) -> None:
        """Warn once when more than ``FALLBACK_WARN_FRACTION`` of the rows so far were not
        decoded on the device."""
        rows = self.decode_counts
        total = sum(rows.values())
        off = total - rows["device"]
        if self._warned or not total or off <= FALLBACK_WARN_FRACTION * total:
            return
        self._warned = True
        reasons = ", ".join(f"{k} {v}" for k, v in rows.items() if k != "device" and v)
        log.warning(
            "device decode: %d of %d rows (%.1f%%) were not decoded on %s (%s); expected at "
            "most %.0f%%: see DevicePrefetcher.decode_counts",
            off, total, 100 * off / total, self.device, reasons, 100 * FALLBACK_WARN_FRACTION,
        )  # fmt: skip


def _as_batch(item: Batch | Sequence[torch.Tensor]) -> Batch:
    """``item`` as it is when it is a batch type (``Batch``, ``MixedBatch``: its extra columns
    and its type kept, for the hand-over record); a plain sequence of five tensors as a
    ``Batch``."""
    return item if hasattr(item, "_fields") else Batch(*item)  # type: ignore[return-value]


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.is_pinned() else tensor.pin_memory()
