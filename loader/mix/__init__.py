"""Mixing datasets: several sources in one epoch, each with an exact integer quota, drawn in
passes without replacement, interleaved deterministically and cut across ranks and workers like
one dataset (docs/architecture.md, "Mixing")."""

from loader.mix.batch import MixedBatch
from loader.mix.dataset import MixedDataset
from loader.mix.interleave import Interleave
from loader.mix.plan import MixPlan
from loader.mix.quotas import epoch_quotas, largest_remainder
from loader.mix.report import named_counts
from loader.mix.source import EXHAUSTION, MixError, Source
from loader.mix.tracker import MixTracker, SourceCounts

__all__ = [
    "EXHAUSTION",
    "Interleave",
    "MixError",
    "MixPlan",
    "MixTracker",
    "MixedBatch",
    "MixedDataset",
    "Source",
    "SourceCounts",
    "epoch_quotas",
    "largest_remainder",
    "named_counts",
]
