"""Benchmark: every mode on the same data against the machine's limit (docs/architecture.md,
"Benchmark"), and the baselines the loader is measured against."""

from loader.bench.baselines import (
    FolderDataset,
    NaiveTarDataset,
    PerWorkerTarDataset,
    folder_loader,
)
from loader.bench.engine import BenchCancelled, BenchConfig, run_bench
from loader.bench.modes import DEFAULT_MODES, MODE_NAMES, MODES

__all__ = [
    "DEFAULT_MODES",
    "MODES",
    "MODE_NAMES",
    "BenchCancelled",
    "BenchConfig",
    "FolderDataset",
    "NaiveTarDataset",
    "PerWorkerTarDataset",
    "folder_loader",
    "run_bench",
]
