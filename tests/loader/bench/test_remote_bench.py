"""``shardfeed bench --http --fault-rate P --cache``: the bench's HTTP server fails on purpose,
``tar-aware`` still delivers every sample once per epoch, and the per-epoch figures show the
retries and the cache filling in epoch 1 and serving epoch 2."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from loader.bench import BenchConfig, run_bench
from loader.bench.http_server import serve_http
from tests.loader.helpers import write_test_shards

SIZES = [7, 5, 9]
TOTAL = sum(SIZES)


def _config(where: Path, **kw: Any) -> BenchConfig:
    options: dict[str, Any] = {
        "folder": None,
        "shards": str(where),
        "modes": ("tar-aware",),
        "workers": 2,
        "batch_size": 4,
        "decode": False,
        "http": True,
        "epochs": 2,
    }
    return BenchConfig(**(options | kw))


def test_faults_and_cache_per_epoch(tmp_path: Path) -> None:
    where = write_test_shards(tmp_path / "shards", SIZES).parent
    doc = run_bench(_config(where, fault_rate=0.3, cache=True, limit_local=True, seed=3))
    mode = doc["modes"]["tar-aware"]
    assert mode["status"] == "ok", mode["reason"]
    first, second = mode["epochs"]
    for epoch in (first, second):
        assert epoch["samples"] == TOTAL and epoch["duplicates"] == 0 and epoch["missing"] == 0
    assert mode["retries"] > 0 and mode["retries"] == first["retries"] + second["retries"]
    assert first["cache_fills"] == 2 * len(SIZES) and first["bytes_fetched"] > 0
    assert second["cache_fills"] == 0 and second["bytes_fetched"] == 0
    assert "node-local cache" in mode["storage"]
    assert doc["config"]["fault_rate"] == 0.3 and doc["config"]["cache"] is True


def test_without_cache_every_epoch_fetches(tmp_path: Path) -> None:
    where = write_test_shards(tmp_path / "shards", SIZES).parent
    doc = run_bench(_config(where, workers=1))
    first, second = doc["modes"]["tar-aware"]["epochs"]
    assert first["cache_fills"] == second["cache_fills"] == 0
    assert first["retries"] == 0 and first["samples"] == second["samples"] == TOTAL


def test_server_fault_rate_one_fails_every_request(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 100_000)
    with serve_http({"d": tmp_path}, fault_rate=1.0) as base:
        outcomes = []
        for _ in range(4):
            try:
                with urllib.request.urlopen(base + "d/a.bin", timeout=10) as response:
                    outcomes.append(len(response.read()))
            except urllib.error.HTTPError as exc:
                outcomes.append(exc.code)
            except (ConnectionError, urllib.error.URLError, OSError) as exc:
                outcomes.append(type(exc).__name__)
        assert 503 in outcomes and 100_000 not in outcomes
    with pytest.raises(ValueError, match="expected fault_rate between 0 and 1"):
        with serve_http({"d": tmp_path}, fault_rate=2.0):
            pass


def test_bad_remote_options(tmp_path: Path) -> None:
    for bad in ({"fault_rate": 0.9}, {"fault_rate": -0.1}, {"fault_rate": "x"}):
        with pytest.raises(ValueError, match="expected fault_rate between"):
            _config(tmp_path, **bad).validate()
    for flag in ({"cache": True}, {"fault_rate": 0.1}, {"limit_local": True}):
        with pytest.raises(ValueError, match="expected http with"):
            _config(tmp_path, http=False, **flag).validate()
