"""Mix test helpers: small sources of our format and the rows a mixed loader delivered."""

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
