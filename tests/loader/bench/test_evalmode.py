"""The ``tar-aware-eval`` bench mode: an eval pass through ``ExactEval`` whose overhead the
report states per epoch and per mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.bench import BenchConfig, run_bench
from tests.loader.helpers import write_test_shards

SIZES = [7, 5, 9]


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_mode_reports_its_overhead_and_every_sample_once(tmp_path: Path, workers: int) -> None:
    shards = write_test_shards(tmp_path / "shards", SIZES).parent
    config = BenchConfig(
        folder=None,
        shards=str(shards),
        modes=("tar-aware-eval",),
        workers=workers,
        batch_size=4,
        epochs=2,
        decode=False,
    )
    mode = run_bench(config)["modes"]["tar-aware-eval"]
    assert mode["status"] == "ok", mode["reason"]
    assert (mode["samples"], mode["duplicates"], mode["missing"]) == (2 * sum(SIZES), 0, 0)
    assert 0 <= mode["eval_overhead"] <= 1 and mode["eval_s"] >= 0
    for epoch in mode["epochs"]:
        assert 0 <= epoch["eval_overhead"] <= 1
        assert epoch["eval_s"] <= epoch["seconds"]
