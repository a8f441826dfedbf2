"""``ExactEval`` over real ranks: 2, 3 and 4 gloo processes, each with two DataLoader workers,
on 599 samples (a prime: no rank count or batch size divides it). Every rank's gathered ids and
values, its totals and a torchmetrics accuracy over the gathered rows equal one process's; a
rank that skips or repeats a batch makes every rank raise, naming the count.

Each rank writes what it got to a JSON file that the test reads.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from loader import EvalCertificateError, ExactEval, make_loader
from tests.loader.helpers import write_test_shards

SIZES = [101, 250, 48, 200]  # 599 samples
TOTAL = sum(SIZES)
BATCH = 13  # 2 ranks: shares of 300 and 299 = 23 * 13, so one row is padded (or dropped)
CLASSES = 3


def fake_logits(ids: torch.Tensor) -> torch.Tensor:
    """A deterministic "model": logits that are right for about two ids in three."""
    logits = torch.zeros(len(ids), CLASSES)
    logits[torch.arange(len(ids)), (ids * 7 + ids // 3) % CLASSES] = 1.0
    return logits + ids[:, None].float() / 1000


def _evaluate(manifest: str, even: str = "pad", workers: int = 2) -> dict[str, Any]:
    """One pass: gathered ids, argmax predictions and labels, totals, torchmetrics accuracy."""
    from torchmetrics.classification import MulticlassAccuracy

    loader = make_loader(
        manifest,
        batch_size=BATCH,
        num_workers=workers,
        image_size=0,
        train=False,
        even=even,
        prefetch_factor=1,
        multiprocessing_context="fork",
    )
    rows = ExactEval(loader)
    sums = ExactEval(loader, rows=False)
    for batch in loader:
        logits = fake_logits(batch.ids)
        preds = logits.argmax(1)
        rows.update(batch, torch.stack([preds, batch.labels], 1))
        sums.update(batch, torch.stack([preds == batch.labels, torch.ones_like(preds)], 1))
    ids, values = rows.gather()
    totals = rows.totals()
    metric = MulticlassAccuracy(num_classes=CLASSES, average="micro", sync_on_compute=False)
    metric.update(values[:, 0], values[:, 1])
    counted = sums.totals()
    return {
        "ids": ids.tolist(),
        "values": values.tolist(),
        "count": totals.count,
        "padded": totals.padded,
        "sums": totals.sums.tolist(),
        "correct": counted.sums.tolist(),
        "torchmetrics": float(metric.compute()),
        "len": len(loader),
    }


def _broken_pass(manifest: str, rank: int, fault: str) -> str:
    """A pass in which rank 1 skips (or repeats) its first batch; returns the error message."""
    loader = make_loader(manifest, batch_size=BATCH, num_workers=0, image_size=0, train=False)
    ev = ExactEval(loader)
    for i, batch in enumerate(loader):
        times = 1
        if rank == 1 and i == 0:
            times = 0 if fault == "skip" else 2
        for _ in range(times):
            ev.update(batch, batch.labels)
    try:
        ev.gather()
    except EvalCertificateError as exc:
        return str(exc)
    return "no error"


def _rank_main(rank: int, world: int, manifest: str, init_file: str, out: str) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(name, None)
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        report: dict[str, Any] = {
            "pad": _evaluate(manifest),
            "drop": _evaluate(manifest, "drop", 0),
        }
        if world == 2:
            report["skip"] = _broken_pass(manifest, rank, "skip")
            report["repeat"] = _broken_pass(manifest, rank, "repeat")
        Path(f"{out}.{rank}").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_test_shards(tmp_path_factory.mktemp("eval") / "data", SIZES))


@pytest.fixture(scope="module")
def one_process(manifest: str) -> dict[str, Any]:
    return _evaluate(manifest)


def _run(world: int, manifest: str, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "report"
    tmp.spawn(
        _rank_main,
        args=(world, manifest, str(tmp_path / "init"), str(out)),
        nprocs=world,
        join=True,
    )
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]


def test_one_process_gathers_every_sample_once_in_id_order(one_process: dict[str, Any]) -> None:
    assert one_process["ids"] == list(range(TOTAL))
    assert one_process["count"] == TOTAL and one_process["padded"] == 0
    labels = [v[1] for v in one_process["values"]]
    assert labels == [i % 3 for i in range(TOTAL)]
    correct = sum(p == y for p, y in one_process["values"])
    assert one_process["correct"] == [correct, TOTAL]
    assert one_process["torchmetrics"] == pytest.approx(correct / TOTAL)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_give_one_process_results(
    world: int, manifest: str, one_process: dict[str, Any], tmp_path: Path
) -> None:
    reports = _run(world, manifest, tmp_path)
    for report in reports:
        got = report["pad"]
        assert got["ids"] == one_process["ids"]
        assert got["values"] == one_process["values"]
        assert got["count"] == TOTAL
        assert got["correct"] == one_process["correct"]
        assert got["torchmetrics"] == one_process["torchmetrics"]
    assert len({r["pad"]["len"] for r in reports}) == 1
    assert sum(r["pad"]["len"] for r in reports) * BATCH >= TOTAL
    evened = 1 if world == 2 else 0
    for report in reports:
        assert report["pad"]["padded"] == evened
        dropped = report["drop"]
        assert dropped["count"] == len(dropped["ids"]) == TOTAL - evened
        assert set(dropped["ids"]) <= set(range(TOTAL))
        assert dropped["ids"] == sorted(set(dropped["ids"]))
    if world == 2:
        for report in reports:
            assert "0 duplicated" in report["skip"] and f"{BATCH} missing" in report["skip"]
            assert "0 missing" in report["repeat"]
            assert f"{BATCH} duplicated" in report["repeat"]
