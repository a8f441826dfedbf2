"""The one rank resolver (``loader.plan.ranks``) and its users."""

from __future__ import annotations

import pytest

from loader.plan.ranks import rank_and_world
from loader.reporter import StatsReporter


def test_explicit_values_win_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world(1, 2) == (1, 2)
    with pytest.raises(ValueError, match="both given or both None, got rank=1 world_size=None"):
        rank_and_world(1, None)
    with pytest.raises(ValueError, match=r"expected rank in \[0, 2\), got rank=2"):
        rank_and_world(2, 2)
    with pytest.raises(ValueError, match="expected world_size >= 1, got world_size=0"):
        rank_and_world(0, 0)


def test_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    assert rank_and_world() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world() == (3, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK='4' WORLD_SIZE='4'"):
        rank_and_world()


def test_the_reporter_takes_its_rank_from_the_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    reporter = StatsReporter("http://127.0.0.1:9", "job", interval_s=60.0)
    try:
        assert reporter.snapshot()["rank"] == 2
    finally:
        reporter.close()
