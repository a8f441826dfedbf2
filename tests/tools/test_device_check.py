"""tools/device_check.sh fits its budget by its own arithmetic: every step's timeout plus its
kill grace plus the untimed glue adds up to at most 480 s, and the script refuses to run when
it does not. Parsed here, and checked against what the script itself prints."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "device_check.sh"
MAX_BUDGET = 480


def _assignments(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^([A-Z0-9_]+)=(\d+)\s*$", text, flags=re.M)}


def _budget_only(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"BUDGET_ONLY": "1", "PATH": "/usr/bin:/bin"},
        cwd=script.parent,
    )


def test_the_steps_fit_the_budget_by_the_scripts_own_arithmetic() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    values = _assignments(text)
    limits = {k: v for k, v in values.items() if k.startswith("T_")}
    budget, kill, glue, steps = (values[k] for k in ("BUDGET", "KILL", "GLUE", "STEPS"))
    total = sum(limits.values()) + steps * kill + glue
    assert budget <= MAX_BUDGET and total <= budget, (total, budget)
    assert len(limits) == steps
    [expression] = re.findall(r"^total=\$\(\((.*?)\)\)", text, flags=re.M | re.S)
    assert set(re.findall(r"T_[A-Z0-9_]+", expression)) == set(limits)
    used = set(re.findall(r'^\s*step \S+ "\$(T_[A-Z0-9_]+)"', text, flags=re.M))
    used |= set(re.findall(r"limit=\$(T_[A-Z0-9_]+)", text))
    assert used | {"T_V2"} == set(limits)  # T_V2: the reserved slot, in the budget already
    proc = _budget_only(SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"= {total} s")


def test_a_budget_that_does_not_add_up_is_refused(tmp_path: Path) -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    over = tmp_path / "device_check.sh"
    over.write_text(re.sub(r"^T_BENCH=\d+", "T_BENCH=400", text, flags=re.M), encoding="utf-8")
    proc = _budget_only(over)
    assert proc.returncode == 2
    assert "expected the steps to fit the budget of 480 s" in proc.stderr


def test_the_order_and_header_promises() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    calls = re.findall(r"^\s*step (\S+) ", text, flags=re.M)
    assert calls[0] == "doctor"
    assert calls.index("bench") < calls.index("tests") < calls.index('"train-$decode"')
    assert "What a run must carry" in text and "---- v2" in text and "---- END v2" in text
    assert "--no-deps" in text and "torch changed" in text
    assert "decoded no row on the device" in text
