"""The one home of argument checks (``loader._checks``), and the constructors that use it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from loader._checks import check_int, check_non_negative
from loader.bench.baselines import NaiveTarDataset
from loader.dataset import ShardDataset
from loader.tracker import DuplicateTracker
from tests.loader.helpers import write_test_shards


def test_check_int_accepts_numpy_and_names_the_bound() -> None:
    assert check_int("n", np.int64(3), 0) == 3
    with pytest.raises(ValueError, match=r"expected an integer n, got n=True"):
        check_int("n", True, 0)
    with pytest.raises(ValueError, match=r"expected n in \[0, 3\), got n=3"):
        check_int("n", 3, 0, 3)


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "1", None])
def test_check_non_negative_refuses_what_is_not_a_finite_number(bad: object) -> None:
    with pytest.raises(ValueError, match=r"latency_ms >= 0, got latency_ms="):
        check_non_negative("latency_ms", bad)


def test_users_raise_the_same_message(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [4])
    with pytest.raises(ValueError, match=r"expected num_samples >= 0, got num_samples=-1"):
        DuplicateTracker(-1)
    with pytest.raises(ValueError, match=r"expected an integer epoch, got epoch=1.5"):
        DuplicateTracker(3).start_epoch(1.5)  # type: ignore[arg-type]
    for make in (ShardDataset, NaiveTarDataset):
        with pytest.raises(
            ValueError, match=r"expected a finite latency_ms >= 0, got latency_ms=nan"
        ):
            make(manifest, latency_ms=math.nan)
