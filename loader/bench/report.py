"""What the benchmark reports besides its figures: the machine, and the terminal table."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from loader.bench.noise import LIMIT_SPREAD, RATIO_CEILING

__all__ = ["format_table", "machine_info"]

_PACKAGES = ("torch", "numpy", "opencv-python-headless", "webdataset", "litdata")
_COLUMNS = (
    ("mode", "mode", "{}"),
    ("status", "status", "{}"),
    ("samples", "samples", "{:d}"),
    ("unique", "unique", "{:d}"),
    ("dup", "duplicates", "{:d}"),
    ("miss", "missing", "{:d}"),
    ("pad", "padded", "{:d}"),
    ("samples/s", "samples_per_s", "{:,.0f}"),
    ("MB/s", "mb_per_s", "{:,.1f}"),
    ("xlimit", "ratio_to_limit", "{:.3f}"),
    ("limit/s", "limit_samples_per_s", "{:,.0f}"),
    ("noise", "noisy", "{}"),
    ("blocked s", "blocked_s", "{:.2f}"),
    ("p50 ms", "p50_batch_ms", "{:.1f}"),
    ("p99 ms", "p99_batch_ms", "{:.1f}"),
    ("cpu s/1k", "main_cpu_s_per_1k", "{:.4f}"),
    ("first s", "first_batch_s", "{:.2f}"),
)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, load, OS, and the versions of Python and the libraries that
    take part (``None`` for one that is not installed)."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    versions = {name: _version(name) for name in _PACKAGES}
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu": _cpu_model(),
        "memory_gb": _memory_gb(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": versions["torch"],
        "numpy": versions["numpy"],
        "opencv": versions["opencv-python-headless"],
        "webdataset": versions["webdataset"],
        "litdata": versions["litdata"],
    }


def _cell(mode: str, result: dict[str, Any], key: str, fmt: str) -> str:
    if key == "mode":
        return mode
    if key == "noisy":
        spread = result.get("limit_spread")
        shown = "" if spread is None else f" ±{100 * spread:.0f}%"
        return f"noisy{shown}" if result.get("noisy") else ""
    value = result.get(key)
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_table(doc: dict[str, Any]) -> str:
    """The report as a fixed-width table, the limit line, and one note per mode that did not
    run (with its reason) or read from somewhere particular."""
    rows = [[title for title, _, _ in _COLUMNS]]
    for mode, result in doc["modes"].items():
        rows.append([_cell(mode, result, key, fmt) for _, key, fmt in _COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    limit = doc["limit"]
    config = doc["config"]
    lines.insert(1, "-" * len(lines[0]))
    rate = limit.get("samples_per_s")
    lines.append("")
    lines.append(
        f"limit: {limit['processes']} processes reading and "
        f"{'decoding' if limit.get('decode') else 'touching'} the shards, no loader: "
        + (f"{rate:,.0f} samples/s (median of {len(limit['runs'])} runs)" if rate else "-")
        + "; each mode's ratio is against the limit runs just before and after it (limit/s), "
        f"and is noisy when it passes {RATIO_CEILING:.2f} or those two runs differ by more "
        f"than {100 * LIMIT_SPREAD:.0f}%"
    )
    machine = doc["machine"]
    lines.append(
        f"machine: {machine['cores']} cores, {machine['cpu']}; workers={config['workers']} "
        f"batch={config['batch_size']} epochs={config['epochs']} repeat={config['repeat']} "
        f"decode={'on' if config['decode'] else 'none'} image={config['image_size']} "
        f"latency={config['latency_ms']:g}ms http={'on' if config['http'] else 'off'}"
    )
    for mode, result in doc["modes"].items():
        if result.get("noisy"):
            lines.append(f"{mode}: noisy: {result.get('noise')}")
        if result.get("reason"):
            lines.append(f"{mode}: {result['status']}: {result['reason']}")
        elif result.get("storage"):
            lines.append(f"{mode}: read from {result['storage']}")
    return "\n".join(lines) + "\n"
