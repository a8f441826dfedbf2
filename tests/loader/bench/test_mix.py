"""``shardfeed bench --mix``: the real console script on tiny shards. Checks the document and
its accounting (every mix delivers its plan: no duplicates, nothing missing), not the speeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loader.helpers import write_test_shards

_SCRIPT = Path(sys.executable).parent / "shardfeed"
SHARDFEED = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "server.cli"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHARDFEED, "bench", *args], capture_output=True, text=True, timeout=300)


def test_mix_bench_reports_rates_ratios_and_exact_counts(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "shards", [9, 8, 7, 6, 5, 4])
    proc = bench("--shards", str(manifest), "--mix", "--json", "--workers", "1",
                 "--batch-size", "4", "--decode", "none", "--repeat", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["kind"] == "shardfeed-bench-mix" and doc["samples"] == 39
    assert set(doc["results"]) == {"single", "mix2", "mix5"}
    for name, parts in (("mix2", 2), ("mix5", 5)):
        result = doc["results"][name]
        assert result["ratio_to_single"] > 0 and len(result["rounds"]) == 2
        assert len(result["sources"]) == parts
        assert sum(c["quota"] for c in result["sources"]) == 39
        assert all(c["duplicates"] == 0 and c["missing"] == 0 for c in result["sources"])
    plan = doc["plan"]
    assert (plan["samples"], plan["sources"], plan["ranks"], plan["workers"]) == (
        1_300_000, 3, 64, 16,
    )  # fmt: skip
    assert plan["plan_ms"] > 0 and 0 < plan["state_bytes"] < 300_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http"], "expected --mix without --http or --folder"),
    ],
)
def test_mix_bench_bad_options_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    manifest = write_test_shards(tmp_path / "shards", [3, 3])
    proc = bench("--shards", str(manifest), "--mix", *args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_too_few_shards_for_five_sources(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "shards", [3, 3])
    proc = bench("--shards", str(manifest), "--mix", "--workers", "0", "--decode", "none")
    assert proc.returncode == 2
    assert "expected at least 5 shards for a 5-source mix, got 2" in proc.stderr
