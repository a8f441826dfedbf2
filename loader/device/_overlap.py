"""Preparing the next batch on the device while the training step runs on the current one
(docs/architecture.md, "Device decode").

``overlapped`` drives ``DevicePrefetcher`` on CUDA. One helper thread prepares batches (pins the
host tensors, decodes byte batches, copies and normalises) inside a side stream; the consumer's
thread only takes items from the loader, hands prepared batches over and makes its stream wait
for them on the device.

Order, per batch ``k`` (one batch ahead):

1. the consumer's thread takes item ``k + 1`` from the loader, then waits for the helper to
   finish preparing batch ``k`` on the host (the time a training loop sees as waiting for data);
2. it submits item ``k + 1`` to the helper, which prepares it on the side stream while the
   consumer trains on batch ``k``, and records an event on the side stream after the last
   kernel of ``k + 1``;
3. before handing batch ``k`` over, the consumer's current stream waits on batch ``k``'s event
   (a wait on the device: the host does not block), every device tensor of the batch is
   ``record_stream``-ed on that stream, and ``handed_over(item k)`` is called.

Invariants. The loader's iterator and ``handed_over`` are used from the consumer's thread only;
``prepare`` runs in the helper thread only, one call at a time, so a decoder that is not
thread-safe is safe here. Anything the helper synchronises on (a decode library's stream wait,
``loader.device._jpegbackends``) blocks the helper, never the consumer. An exception in
``prepare`` is raised in the consumer's thread when it asks for that batch. When the consumer
stops early, the batch being prepared is finished, then dropped.

The CUDA calls go through ``StreamOps``: ``TorchStreams`` in use, recording fakes in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

import torch

__all__ = ["EventLike", "SideStream", "StreamOps", "TorchStreams", "overlapped"]

Item = TypeVar("Item")
Ready = TypeVar("Ready")


class EventLike(Protocol):
    def record(self, stream: SideStream) -> None: ...


class SideStream(Protocol):
    def wait_stream(self, stream: SideStream) -> None: ...

    def wait_event(self, event: EventLike) -> None: ...


class StreamOps(Protocol):
    """The CUDA stream calls ``overlapped`` makes."""

    def current_stream(self, device: torch.device) -> SideStream: ...

    def new_stream(self, device: torch.device) -> SideStream: ...

    def use(self, stream: SideStream) -> AbstractContextManager[object]: ...

    def new_event(self) -> EventLike: ...

    def record_stream(self, tensor: torch.Tensor, stream: SideStream) -> None: ...


class TorchStreams:
    """``StreamOps`` of ``torch.cuda``."""

    def current_stream(self, device: torch.device) -> SideStream:
        return torch.cuda.current_stream(device)  # type: ignore[return-value]

    def new_stream(self, device: torch.device) -> SideStream:
        return torch.cuda.Stream(device)  # type: ignore[return-value]

    def use(self, stream: SideStream) -> AbstractContextManager[object]:
        return torch.cuda.stream(stream)  # type: ignore[arg-type]

    def new_event(self) -> EventLike:
        return torch.cuda.Event()  # type: ignore[return-value]

    def record_stream(self, tensor: torch.Tensor, stream: SideStream) -> None:
        tensor.record_stream(stream)  # type: ignore[arg-type]


_END = object()


def overlapped(
    items: Iterator[Item],
    prepare: Callable[[Item], tuple[Item, Ready]],
    *,
    ops: StreamOps,
    device: torch.device,
    device_tensors: Callable[[Ready], Iterable[torch.Tensor]],
    handed_over: Callable[[Item], None] | None = None,
) -> Iterator[Ready]:
    """Each item of ``items`` as ``prepare`` makes it ready on ``device``, one batch ahead and in
    order, in the order described in the module doc. ``prepare(item)`` returns the host item to
    keep until hand-over (pinned copies, say) and the prepared batch; ``device_tensors(ready)``
    are the device tensors handed over."""
    side = ops.new_stream(device)
    side.wait_stream(ops.current_stream(device))

    def run(item: Item) -> tuple[Item, Ready, EventLike]:
        with ops.use(side):
            host, ready = prepare(item)
            event = ops.new_event()
            event.record(side)
        return host, ready, event

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shardfeed-prepare")
    try:
        first = next(items, _END)
        pending: Future[tuple[Item, Ready, EventLike]] | None = (
            None if first is _END else pool.submit(run, first)  # type: ignore[arg-type]
        )
        while pending is not None:
            upcoming = next(items, _END)
            host, ready, event = pending.result()
            pending = None if upcoming is _END else pool.submit(run, upcoming)  # type: ignore[arg-type]
            consumer = ops.current_stream(device)
            consumer.wait_event(event)
            for tensor in device_tensors(ready):
                ops.record_stream(tensor, consumer)
            if handed_over is not None:
                handed_over(host)
            del host
            yield ready
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
