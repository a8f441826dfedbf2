"""``shardfeed doctor`` (server/doctor.py), run as a subprocess: it reports every backend as
available or with the exact reason, never crashes on a broken install, and exits 1 only when
``--require gpu`` finds no CUDA device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def doctor(*args: str, broken: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``shardfeed doctor ARGS`` in a fresh interpreter; ``broken`` goes first on PYTHONPATH."""
    path = [str(broken)] if broken is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def report(*args: str, broken: Path | None = None) -> dict[str, Any]:
    proc = doctor("--json", *args, broken=broken)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def broken_package(root: Path, name: str, error: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"raise {error}\n", encoding="utf-8")
    return root


def test_the_report_names_every_part_and_its_status() -> None:
    doc = report()
    assert doc["torch"]["status"] == "available" and doc["torch"]["version"] == torch.__version__
    assert set(doc["backends"]) == {"opencv", "jpegturbo", "torchcodec", "torchvision"}
    assert doc["backends"]["opencv"] == "available"
    for name in ("torchcodec", "torchvision"):
        status = doc["backends"][name]
        assert status == "available" or status.startswith("ModuleNotFoundError: "), status
    assert {"ray", "s3", "bench: webdataset"} <= set(doc["extras"])
    assert doc["shared_memory"]["total_bytes"] > 0 and doc["cpus"] >= 1
    text = doctor().stdout
    assert "decode backends:" in text and "shared memory /dev/shm" in text


@NO_GPU
def test_require_gpu_fails_without_one_and_says_why() -> None:
    assert doctor().returncode == 0
    proc = doctor("--require", "gpu")
    assert proc.returncode == 1
    assert proc.stderr.startswith("shardfeed doctor: expected a usable CUDA device")
    assert "decode='device' here: CPU stand-in" in proc.stdout


def test_broken_gpu_libraries_are_reported_with_their_exact_errors(tmp_path: Path) -> None:
    broken_package(tmp_path, "torchcodec", "OSError('libnvjpeg.so.12: cannot open shared object')")
    broken_package(tmp_path, "torchvision", "RuntimeError('operator torchvision::nms missing')")
    doc = report(broken=tmp_path)
    assert doc["backends"]["torchcodec"] == "OSError: libnvjpeg.so.12: cannot open shared object"
    assert doc["backends"]["torchvision"] == "RuntimeError: operator torchvision::nms missing"


def test_a_broken_opencv_is_reported_and_the_rest_still_runs(tmp_path: Path) -> None:
    broken_package(tmp_path, "cv2", "ImportError('libGL.so.1: cannot open shared object file')")
    doc = report(broken=tmp_path)
    assert doc["backends"]["opencv"] == "ImportError: libGL.so.1: cannot open shared object file"
    assert doc["backends"]["torchcodec"].startswith("not probed: the loader does not import")
    assert doc["torch"]["status"] == "available"


def test_a_torch_that_cannot_load_is_reported_not_raised(tmp_path: Path) -> None:
    broken_package(tmp_path, "torch", "OSError('libtorch_cuda.so: undefined symbol: foo')")
    doc = report(broken=tmp_path)
    assert doc["torch"] == {"status": "OSError: libtorch_cuda.so: undefined symbol: foo"}
    assert doc["backends"]["torchvision"] == "not probed: torch does not import"
    assert doc["backends"]["opencv"] == "available"
    proc = doctor("--require", "gpu", broken=tmp_path)
    assert proc.returncode == 1 and "libtorch_cuda.so" in proc.stderr
    assert "torch: OSError: libtorch_cuda.so" in proc.stdout
