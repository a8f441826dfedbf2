"""In-process event bus feeding the server-sent events stream (``GET /api/events``).

Invariants: ``publish`` may be called from any thread; delivery happens on the event loop the
bus was bound to, so subscriber queues are only touched by that loop. A subscriber that falls
``max_queue`` events behind loses its oldest events (the next event it reads says how many
in its ``dropped`` field) rather than slowing the publishers. ``close`` wakes every subscriber with
the end of the stream.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

__all__ = ["EventBus", "Subscription"]

_END: dict[str, Any] = {"type": "end"}


class _Subscriber:
    def __init__(self, max_queue: int) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queue)
        self.dropped = 0


class Subscription:
    """One subscriber's events, registered from the moment ``EventBus.subscribe`` returned."""

    def __init__(self, registry: set[_Subscriber], sub: _Subscriber, heartbeat_s: float) -> None:
        self._registry, self._sub, self._heartbeat_s = registry, sub, heartbeat_s

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any] | None:
        sub = self._sub
        try:
            event = await asyncio.wait_for(sub.queue.get(), self._heartbeat_s)
        except TimeoutError:
            return None
        if event is _END:
            self.close()
            raise StopAsyncIteration
        if sub.dropped:
            event, sub.dropped = dict(event, dropped=sub.dropped), 0
        return event

    def close(self) -> None:
        """Stop receiving events; idempotent."""
        self._registry.discard(self._sub)


class EventBus:
    """Fan-out of JSON-able events to async subscribers; each event gets an increasing ``id``."""

    def __init__(self, max_queue: int = 256) -> None:
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[_Subscriber] = set()
        self._ids = itertools.count(1)
        self._closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on ``loop`` from now on (called once the app's loop runs)."""
        with self._lock:
            self._loop = loop
            self._closed = False

    def publish(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for every subscriber; never blocks, never raises for a closed loop."""
        with self._lock:
            loop = self._loop
            if loop is None or self._closed:
                return
            event = dict(event, id=next(self._ids))
        try:
            loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:
            return

    def _deliver(self, event: dict[str, Any]) -> None:
        for sub in list(self._subscribers):
            if sub.queue.full():
                sub.queue.get_nowait()
                sub.dropped += 1
            sub.queue.put_nowait(event)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, heartbeat_s: float) -> Subscription:
        """Register a subscriber now and return its events (``async for``): each as it comes,
        None after ``heartbeat_s`` of silence; the iteration ends on ``close``. Call it on the
        bus's loop: every event published after the call reaches the subscription (none is
        lost to one still starting). ``Subscription.close`` unregisters it."""
        sub = _Subscriber(self._max_queue)
        self._subscribers.add(sub)
        return Subscription(self._subscribers, sub, heartbeat_s)

    def close(self) -> None:
        """End every subscription; later publishes are dropped until the next ``bind``."""
        with self._lock:
            loop, self._closed = self._loop, True
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._end_all)
        except RuntimeError:
            return

    def _end_all(self) -> None:
        for sub in list(self._subscribers):
            while sub.queue.full():
                sub.queue.get_nowait()
            sub.queue.put_nowait(_END)
