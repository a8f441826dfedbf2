"""loader/device/_overlap.py with recording fakes of CUDA streams: the next batch is prepared in
a helper thread while the consumer holds the current one, the consumer's stream waits on each
batch's event on the device, and the consumer's thread never synchronises."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from loader.device._overlap import overlapped
from tests.loader.device.helpers import DEVICE, FakeStreams, Log

WAIT_S = 30.0  # a bound for a condition that holds at once when the code is right


class Source:
    """Items 0..n-1, counting how many were taken."""

    def __init__(self, n: int) -> None:
        self.n, self.taken = n, 0

    def __iter__(self) -> Iterator[int]:
        for k in range(self.n):
            self.taken += 1
            yield k


def _run(
    streams: FakeStreams,
    source: Source,
    prepare_hook: dict[int, threading.Event] | None = None,
    fail_at: int | None = None,
) -> Iterator[torch.Tensor]:
    log = streams.log

    def prepare(item: int) -> tuple[int, torch.Tensor]:
        if fail_at == item:
            raise ValueError(f"expected a decodable batch, got batch={item}")
        log(f"prepare {item}")
        streams.current_stream(DEVICE).synchronize()  # the decode library's wait
        if prepare_hook is not None and item in prepare_hook:
            prepare_hook[item].set()
        return item, torch.tensor([item])

    return overlapped(
        iter(source),
        prepare,
        ops=streams,
        device=DEVICE,
        device_tensors=lambda ready: (ready, ready.clone()),
        handed_over=lambda item: log(f"handed over {item}"),
    )


def test_each_batch_is_prepared_on_the_side_stream_and_waited_on_by_the_device() -> None:
    log = Log()
    streams = FakeStreams(log)
    for batch in _run(streams, Source(4)):
        log(f"step on {int(batch[0])}")
    whats = [w for _, w in log.calls]
    assert whats[0] == "side waits for consumer"
    for k in range(4):
        order = [
            f"prepare {k}",
            "host synchronises side",
            f"event {k} recorded on side",
            f"consumer waits on event {k}",
            f"batch {k} tensor kept for consumer",
            f"handed over {k}",
            f"step on {k}",
        ]
        at = [log.index(order[0])]
        at += [whats.index(w, at[0]) for w in order[1:]]
        assert at == sorted(at), (k, at)
    for thread, what in log.calls:
        helper = thread.startswith("shardfeed-prepare")
        assert helper == what.startswith(("prepare", "host synchronises", "event")), what
    assert log.thread_of("prepare 0") != threading.current_thread().name


def test_the_next_batch_is_prepared_while_the_consumer_holds_the_current_one() -> None:
    log = Log()
    source = Source(5)
    prepared = {k: threading.Event() for k in range(5)}
    taken_while_holding = []
    for batch in _run(FakeStreams(log), source, prepared):
        k = int(batch[0])
        if k + 1 < 5:  # the consumer "trains" on k and never asks for k + 1 meanwhile
            assert prepared[k + 1].wait(WAIT_S), f"batch {k + 1} not prepared during step {k}"
        taken_while_holding.append(source.taken)
    assert taken_while_holding == [2, 3, 4, 5, 5]  # one batch ahead, never more


def test_an_error_while_preparing_reaches_the_consumer_at_that_batch() -> None:
    got = []
    with pytest.raises(ValueError, match="got batch=2"):
        for batch in _run(FakeStreams(Log()), Source(5), fail_at=2):
            got.append(int(batch[0]))
    assert got == [0, 1]


def test_stopping_early_takes_no_more_items_and_stops_the_helper() -> None:
    log = Log()
    source = Source(10)
    batches = _run(FakeStreams(log), source)
    assert int(next(batches)[0]) == 0
    batches.close()  # type: ignore[attr-defined]
    assert source.taken == 2
    assert not any(t.name.startswith("shardfeed-prepare") for t in threading.enumerate())
    assert [w for _, w in log.calls if w.startswith("handed")] == ["handed over 0"]


def test_an_empty_loader_yields_nothing() -> None:
    assert list(_run(FakeStreams(Log()), Source(0))) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prefetcher_decodes_in_the_helper_thread_and_matches_the_cpu(
    tmp_path: Path,
) -> None:
    from loader.dataloader import make_loader
    from loader.device.decoder import DeviceDecoder
    from loader.device.prefetcher import DevicePrefetcher
    from tests.loader.device.helpers import oriented_jpeg
    from tests.loader.helpers import write_test_shards

    threads: set[str] = set()

    class Recording(DeviceDecoder):
        def decode_batch(self, batch: Any, device: torch.device) -> Any:
            threads.add(threading.current_thread().name)
            return super().decode_batch(batch, device)

    manifest = write_test_shards(
        tmp_path, [6, 6], image_bytes=lambda g: oriented_jpeg(1 if g % 4 else 6, seed=g)
    )

    def delivered(device: str) -> dict[int, torch.Tensor]:
        loader = make_loader(
            str(manifest), batch_size=4, num_workers=0, image_size=16, seed=1,
            decode=Recording(16, train=False, backend="cpu"),
        )  # fmt: skip
        prefetcher = DevicePrefetcher(loader, device=device)
        out = {}
        for batch in prefetcher:
            for row, gid in enumerate(batch.ids.tolist()):
                out[gid] = batch.images[row].cpu()
        assert prefetcher.decode_counts["orientation"] == 3
        return out

    on_cpu = delivered("cpu")
    threads.clear()
    on_gpu = delivered("cuda")
    assert threads and all(t.startswith("shardfeed-prepare") for t in threads)
    assert sorted(on_gpu) == sorted(on_cpu)
    for gid, image in on_cpu.items():
        assert torch.allclose(on_gpu[gid], image, atol=1e-4), gid
