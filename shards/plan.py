"""Shard planning: one seeded global shuffle, then a cut into shards.

The plan is a pure function of the scan and the options, so every machine of a ``--part``
build computes the same plan and writes its own shards of it without talking to the others.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shards.scan import Candidate

__all__ = ["ShardPlan", "SizingOptions", "parse_part", "plan_shards"]


@dataclass(frozen=True)
class SizingOptions:
    """Exactly one of the three is set; ``plan_shards`` checks it."""

    num_shards: int | None = None
    max_samples: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class ShardPlan:
    """``shards[i]`` lists indices into the candidate list, in sample order.

    ``order`` is the shuffled candidate order; the key of a sample is its position in it.
    """

    order: np.ndarray
    shards: list[np.ndarray]

    def positions(self, shard: int) -> range:
        start = sum(len(s) for s in self.shards[:shard])
        return range(start, start + len(self.shards[shard]))

    def fingerprint(self, candidates: Sequence[Candidate]) -> str:
        """A hash of which file goes where, to tell a resumable build from a changed input."""
        h = hashlib.sha256()
        for shard in self.shards:
            h.update(b"|")
            for i in shard:
                c = candidates[int(i)]
                h.update(f"{c.rel}\0{c.label}\0{c.size}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def plan_shards(candidates: Sequence[Candidate], seed: int, sizing: SizingOptions) -> ShardPlan:
    """Shuffle ``candidates`` with ``seed`` and cut the order into shards.

    With ``num_shards`` or ``max_samples`` shard sizes differ by at most one sample; with
    ``max_bytes`` a shard closes before the file that would take it past the limit (a file
    larger than the limit gets a shard of its own). Raises ``ValueError`` for bad sizing.
    """
    n = len(candidates)
    if n == 0:
        raise ValueError("no image files found to shard: the source has no candidates")
    chosen = [v for v in (sizing.num_shards, sizing.max_samples, sizing.max_bytes) if v is not None]
    if len(chosen) != 1:
        raise ValueError("expected exactly one of --num-shards, --max-samples, --max-bytes")
    order = np.random.default_rng(seed).permutation(n)
    if sizing.num_shards is not None or sizing.max_samples is not None:
        if sizing.num_shards is not None:
            if sizing.num_shards < 1:
                raise ValueError(
                    f"expected --num-shards >= 1, got --num-shards={sizing.num_shards}"
                )
            count = min(sizing.num_shards, n)
        else:
            assert sizing.max_samples is not None
            if sizing.max_samples < 1:
                raise ValueError(
                    f"expected --max-samples >= 1, got --max-samples={sizing.max_samples}"
                )
            count = math.ceil(n / sizing.max_samples)
        return ShardPlan(order, list(np.array_split(order, count)))
    assert sizing.max_bytes is not None
    if sizing.max_bytes < 1:
        raise ValueError(f"expected --max-bytes >= 1, got --max-bytes={sizing.max_bytes}")
    sizes = np.fromiter((candidates[int(i)].size + 3 * 1536 for i in order), np.int64, n)
    cuts: list[int] = []
    total = 0
    for pos, size in enumerate(sizes):
        if total and total + size > sizing.max_bytes:
            cuts.append(pos)
            total = 0
        total += int(size)
    return ShardPlan(order, list(np.split(order, cuts)))


def parse_part(text: str) -> tuple[int, int]:
    """``"I/K"`` -> ``(I, K)`` with ``1 <= I <= K``; ``ValueError`` naming the value otherwise."""
    try:
        left, right = text.split("/")
        part, parts = int(left), int(right)
    except ValueError:
        raise ValueError(f"expected --part I/K such as 1/4, got --part={text!r}") from None
    if parts < 1 or not 1 <= part <= parts:
        raise ValueError(f"expected 1 <= I <= K in --part I/K, got --part={text!r}")
    return part, parts
