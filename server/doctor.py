"""``shardfeed doctor``: what this machine can do for shardfeed, as text or ``--json``.

It reports torch with its CUDA version and devices; each decode backend (OpenCV, the
libjpeg-turbo crop helper ``shards/_jpegturbo``, TorchCodec, torchvision) as ``"available"`` or
the exact reason it is not (the exception's type and message); what ``decode="device"`` would
decode with here; the optional extras (bench peers, Ray, S3) as installed versions; the CPUs
and the shared memory DataLoader workers pass batches through.

Promise: it never crashes on a broken install. Everything is imported inside a probe that
catches any exception, torch first and lazily (this module imports nothing heavy), so a torch,
OpenCV or GPU library that cannot load is reported, not raised. Exit 0, unless
``--require gpu`` is given and no CUDA device is usable (exit 1, one line on stderr saying why)
(docs/architecture.md, "Device decode").
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Callable
from typing import Any, Final

__all__ = ["COMMAND", "diagnose", "format_report", "has_gpu", "register"]

COMMAND: Final = "doctor"
AVAILABLE: Final = "available"
MIN_SHM_BYTES: Final = 1 << 30
"""Below this, /dev/shm is likely too small for DataLoader workers (Docker's default is 64 MB)."""

_EXTRAS: Final = (
    ("bench: webdataset", "webdataset", "webdataset", "pip install webdataset"),
    ("bench: litdata", "litdata", "litdata", "make bench"),
    ("bench: mosaicml-streaming", "streaming", "mosaicml-streaming", "make bench"),
    ("bench: spdl", "spdl", "spdl-core", "pip install 'shardfeed[bench]'"),
    ("bench: pillow", "PIL", "pillow", "pip install 'shardfeed[bench]'"),
    ("ray", "ray", "ray", "pip install 'shardfeed[ray]'"),
    ("s3", "s3fs", "s3fs", "pip install 'shardfeed[s3]'"),
)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _probe(check: Callable[..., Any], *args: Any) -> tuple[Any, str | None]:
    """``(check(*args), None)``, or ``(None, "Type: message")`` for any exception it raises."""
    try:
        return check(*args), None
    except Exception as exc:
        return None, _why(exc)


def _torch() -> dict[str, Any]:
    torch, why = _probe(importlib.import_module, "torch")
    if torch is None:
        return {"status": why}
    doc: dict[str, Any] = {"status": AVAILABLE, "version": torch.__version__}
    doc["cuda_build"] = getattr(torch.version, "cuda", None)
    usable, why = _probe(torch.cuda.is_available)
    doc["cuda"] = AVAILABLE if usable else (why or "no CUDA device visible to torch")
    devices = []
    if usable:
        for index in range(torch.cuda.device_count()):
            props, why = _probe(torch.cuda.get_device_properties, index)
            if props is None:
                devices.append({"index": index, "status": why})
                continue
            devices.append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    doc["devices"] = devices
    return doc


def _opencv() -> str:
    _, why = _probe(importlib.import_module, "cv2")
    return why or AVAILABLE


def _versions() -> dict[str, str | None]:
    """Installed versions of the decode libraries (from their metadata: nothing imported)."""
    names: dict[str, tuple[str, ...]] = {
        "opencv": ("opencv-python-headless", "opencv-python"),
        "torchcodec": ("torchcodec",),
        "torchvision": ("torchvision",),
    }
    versions: dict[str, str | None] = {}
    for name, distributions in names.items():
        found = (_probe(importlib.metadata.version, d)[0] for d in distributions)
        versions[name] = next((v for v in found if v), None)
    return versions


def _jpegturbo() -> str:
    built, why = _probe(lambda: importlib.import_module("shards.jpegturbo").available())
    if why is not None:
        return why
    if not built:
        return (
            "not built: no shards/_jpegturbo*.so; install the libjpeg headers "
            "(libjpeg62-turbo-dev) and reinstall shardfeed"
        )
    return AVAILABLE


def _gpu_libraries(torch_ok: bool) -> dict[str, str]:
    names = ("torchcodec", "torchvision")
    if not torch_ok:
        return dict.fromkeys(names, "not probed: torch does not import")
    module, why = _probe(importlib.import_module, "loader.device._jpegbackends")
    if module is None:
        return dict.fromkeys(names, f"not probed: the loader does not import ({why})")
    status, why = _probe(module.gpu_library_status)
    return status if status is not None else dict.fromkeys(names, f"not probed: {why}")


def _device_decode(torch_doc: dict[str, Any], libraries: dict[str, str]) -> str:
    if torch_doc.get("cuda") != AVAILABLE:
        return "CPU stand-in (OpenCV): no usable CUDA device"
    for name, status in libraries.items():
        if status == AVAILABLE:
            return f"nvJPEG through {name}"
    return "none: decode='device' on CUDA fails; pip install 'shardfeed[gpu]' (TorchCodec)"


def _extras() -> dict[str, str]:
    extras = {}
    for label, module, distribution, how in _EXTRAS:
        spec, why = _probe(importlib.util.find_spec, module)
        if why is not None:
            extras[label] = why
        elif spec is None:
            extras[label] = f"not installed: {how}"
        else:
            version, _ = _probe(importlib.metadata.version, distribution)
            extras[label] = f"installed {version}" if version else "installed"
    return extras


def _shared_memory(path: str = "/dev/shm") -> dict[str, Any]:
    stat, why = _probe(os.statvfs, path)
    if stat is None:
        return {"path": path, "status": why}
    total, free = stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize
    doc: dict[str, Any] = {"path": path, "total_bytes": total, "free_bytes": free}
    if total < MIN_SHM_BYTES:
        doc["warning"] = (
            f"{path} holds {total / 2**20:.0f} MiB: DataLoader workers may fail to pass "
            "batches; give the container more (docker run --shm-size=8g)"
        )
    return doc


def diagnose() -> dict[str, Any]:
    """The report as one JSON-ready document; never raises."""
    torch_doc = _torch()
    libraries = _gpu_libraries(torch_doc["status"] == AVAILABLE)
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "torch": torch_doc,
        "backends": {
            "opencv": _opencv(),
            "jpegturbo": _jpegturbo(),
            **libraries,
        },
        "versions": _versions(),
        "device_decode": _device_decode(torch_doc, libraries),
        "extras": _extras(),
        "shared_memory": _shared_memory(),
    }


def has_gpu(report: dict[str, Any]) -> bool:
    """Whether ``report`` (``diagnose()``) found a usable CUDA device."""
    torch_doc = report["torch"]
    return torch_doc.get("cuda") == AVAILABLE and any("name" in d for d in torch_doc["devices"])


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned ``name: value`` lines."""
    t = report["torch"]
    lines = [f"python: {report['python']} on {report['platform']}", f"cpus: {report['cpus']}"]
    if t["status"] == AVAILABLE:
        lines.append(f"torch: {t['version']} (CUDA build {t['cuda_build'] or 'none'})")
        lines.append(f"cuda: {t['cuda']}")
        for d in t["devices"]:
            detail = d.get("status") or f"{d['name']}, {d['memory_gib']} GiB, sm {d['capability']}"
            lines.append(f"  cuda:{d['index']}: {detail}")
    else:
        lines.append(f"torch: {t['status']}")
    lines.append("decode backends:")
    for name, status in report["backends"].items():
        version = report["versions"].get(name)
        lines.append(f"  {name}: {status}" + (f" ({version})" if version else ""))
    lines.append(f"decode='device' here: {report['device_decode']}")
    lines.append("optional extras:")
    lines += [f"  {name}: {status}" for name, status in report["extras"].items()]
    shm = report["shared_memory"]
    if "status" in shm:
        lines.append(f"shared memory {shm['path']}: {shm['status']}")
    else:
        lines.append(
            f"shared memory {shm['path']}: {shm['total_bytes'] / 2**30:.1f} GiB, "
            f"{shm['free_bytes'] / 2**30:.1f} GiB free"
        )
        if "warning" in shm:
            lines.append(f"  warning: {shm['warning']}")
    return "\n".join(lines) + "\n"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``shardfeed doctor`` to the ``shardfeed`` parser."""
    p = sub.add_parser(
        COMMAND,
        help="what this machine can do: torch, CUDA, decode backends, extras, shared memory",
        description="Report torch and CUDA, each decode backend (available, or why not), the "
        "optional extras and shared memory. Never fails on a broken install.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--require",
        choices=("gpu",),
        help="exit 1 unless this is available (gpu: a usable CUDA device)",
    )
    p.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    report = diagnose()
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(format_report(report))
    if args.require == "gpu" and not has_gpu(report):
        sys.stderr.write(
            f"shardfeed doctor: expected a usable CUDA device (--require gpu), got "
            f"cuda={report['torch'].get('cuda', report['torch']['status'])!r}\n"
        )
        return 1
    return 0
