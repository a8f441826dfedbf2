from __future__ import annotations

import asyncio
import threading
from typing import Any

from server.events import EventBus, Subscription


async def collect(subscription: Subscription, count: int) -> list[Any]:
    got: list[Any] = []
    async for event in subscription:
        got.append(event)
        if len(got) >= count:
            break
    subscription.close()
    return got


def test_events_published_from_other_threads_arrive_in_order() -> None:
    async def scenario() -> list[Any]:
        bus = EventBus()
        bus.bind(asyncio.get_running_loop())
        task = asyncio.create_task(collect(bus.subscribe(5.0), 3))  # subscribed already

        def publish_three() -> None:
            for n in range(3):
                bus.publish({"type": "x", "n": n})

        worker = threading.Thread(target=publish_three)
        worker.start()
        worker.join()
        return await asyncio.wait_for(task, 5)

    events = asyncio.run(scenario())
    assert [e["n"] for e in events] == [0, 1, 2]
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})


def test_silence_yields_heartbeats() -> None:
    async def scenario() -> list[Any]:
        bus = EventBus()
        bus.bind(asyncio.get_running_loop())
        return await asyncio.wait_for(collect(bus.subscribe(0.01), 2), 5)

    assert asyncio.run(scenario()) == [None, None]


def test_a_slow_subscriber_loses_the_oldest_events_and_is_told() -> None:
    async def scenario() -> list[Any]:
        bus = EventBus(max_queue=2)
        bus.bind(asyncio.get_running_loop())
        stream = bus.subscribe(5.0)
        for n in range(5):
            bus.publish({"n": n})
        await asyncio.sleep(0)  # deliveries are callbacks on this loop: let them run
        got = [await stream.__anext__(), await stream.__anext__()]
        stream.close()
        assert bus.subscribers == 0
        return got

    events = asyncio.run(scenario())
    assert [e["n"] for e in events] == [3, 4]
    assert events[0]["dropped"] == 3
    assert "dropped" not in events[1]


def test_close_ends_every_subscription_and_drops_later_events() -> None:
    async def scenario() -> tuple[list[Any], int]:
        bus = EventBus()
        bus.bind(asyncio.get_running_loop())
        task = asyncio.create_task(collect(bus.subscribe(5.0), 10))
        bus.publish({"n": 1})
        bus.close()
        bus.publish({"n": 2})
        events = await asyncio.wait_for(task, 5)
        return events, bus.subscribers

    events, left = asyncio.run(scenario())
    assert [e["n"] for e in events] == [1]
    assert left == 0


def test_publish_before_bind_or_after_the_loop_closed_is_dropped_without_error() -> None:
    bus = EventBus()
    bus.publish({"n": 0})
    closed = asyncio.new_event_loop()
    bus.bind(closed)
    closed.close()
    bus.publish({"n": 1})

    async def scenario() -> list[Any]:
        bus.bind(asyncio.get_running_loop())
        task = asyncio.create_task(collect(bus.subscribe(5.0), 1))
        bus.publish({"n": 2})
        return await asyncio.wait_for(task, 5)

    events = asyncio.run(scenario())
    assert [e["n"] for e in events] == [2]
    bus.close()
