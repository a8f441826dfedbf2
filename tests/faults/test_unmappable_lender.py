"""A recycled batch buffer whose owner cannot be mapped through ``/proc/<pid>/fd``
(docs/architecture.md, section "Loader"): the worker sees it cannot lend and sends its
batches through PyTorch's own shared memory instead, so the epoch completes.

Real processes: the main process runs without CAP_SYS_PTRACE (dropped from its bounding set
before exec) and its DataLoader workers make themselves non-dumpable, which is exactly when the
kernel refuses the main process their ``/proc/<pid>/fd``.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CAP_SYS_PTRACE = 19
PR_CAPBSET_DROP = 24


def _drop_ptrace() -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE)")


@pytest.mark.timeout(180)
def test_batches_of_an_unmappable_worker_arrive_by_copy(tmp_path: Path) -> None:
    preexec = _drop_ptrace if os.geteuid() == 0 else None
    args = [sys.executable, "-m", "tests.faults.undumpable_loader", str(tmp_path / "data")]
    try:
        done = subprocess.run(
            args, cwd=ROOT, capture_output=True, text=True, timeout=150, preexec_fn=preexec
        )
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot drop CAP_SYS_PTRACE here: {exc}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "delivered 40 unique 40" in done.stdout
    assert "LentBufferError" not in done.stderr
