"""tools/mix_check.py keeps working: on a tiny setting it prints one JSON document whose plans
and resume points show no duplicate and no missing position, every fresh batch within the mix,
and the large plan's figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_run_prints_clean_counts_and_the_scale_figures() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mix_check.py"), "--plans", "20", "--resumes", "5",
         "--seed", "3"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    plans, resumes = doc["plans"], doc["resumes"]
    assert plans["plans"] + plans.get("refused", 0) == 20 and resumes["resumes"] == 5
    assert plans["batches"] > 0 and resumes["batches"] > 0
    for counts in (plans, resumes):
        assert counts.get("duplicates", 0) == counts.get("missing", 0) == 0, counts
    for field in ("quota_errors", "source_quota_errors", "windows_over_bound", "batches_off_mix"):
        assert plans.get(field, 0) == 0, (field, plans)
    assert resumes.get("row_errors", 0) == 0
    scale = doc["scale"]
    assert (scale["samples"], scale["sources"], scale["ranks"], scale["workers"]) == (
        1_300_000, 3, 64, 16,
    )  # fmt: skip
    assert scale["plan_ms"] > 0 and scale["state_bytes"] > scale["rank_state_bytes"] > 0
    assert scale["rank_state_samples_taken"] > 0
