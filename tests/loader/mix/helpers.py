"""Mix test helpers: small sources of our format, the rows a mixed loader delivered, and the
plan-level measures the property tests and ``tools/mix_check.py`` share (``positions_of``,
``window_error``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from loader.mix.dataset import MixedDataset
from tests.loader.helpers import write_test_shards

Row = tuple[int, int]


def write_sources(root: Path, shard_lists: list[list[int]]) -> list[Path]:
    """One manifest per shard-size list, in ``root/s0``, ``root/s1``, ..."""
    return [write_test_shards(root / f"s{i}", sizes) for i, sizes in enumerate(shard_lists)]


def rows(batches: Any) -> tuple[list[Row], int, list[Any]]:
    """The real ``(source, id)`` rows, the padded count and the batches of one pass over
    ``batches``."""
    real: list[Row] = []
    padded = 0
    seen = []
    for batch in batches:
        keep = ~batch.padded.numpy()
        padded += int((~keep).sum())
        sources, ids = batch.source.numpy()[keep].tolist(), batch.ids.numpy()[keep].tolist()
        real += list(zip(sources, ids, strict=True))
        seen.append(batch)
    return real, padded, seen


def planned(dataset: MixedDataset, epoch: int) -> Counter[Row]:
    """The ``(source, id)`` rows the plan of ``epoch`` holds, with multiplicity."""
    source, ids = dataset.mix.lookup(epoch, np.arange(dataset.mix.epoch_size))
    return Counter(zip(source.tolist(), ids.tolist(), strict=True))


def positions_of(plans: list) -> tuple[np.ndarray, np.ndarray, int]:
    """All planned positions, all pad positions and the dropped count of an epoch's plans."""
    runs = [
        np.arange(s.first_id, s.first_id + len(s)) for r in plans for w in r for s in w.segments
    ]
    pads = [p for r in plans for w in r for p in w.pad_ids]
    drops = sum(w.drop for r in plans for w in r)
    return np.concatenate(runs) if runs else np.zeros(0, np.int64), np.asarray(pads), drops


def window_error(sources: np.ndarray, source: int, quota: int) -> float:
    """The largest ``|count - w * q / N|`` over all windows of consecutive positions."""
    n = len(sources)
    counts = np.concatenate([[0], np.cumsum(sources == source)])
    drift = counts - np.arange(n + 1) * quota / n
    return float(drift.max() - drift.min())
