"""The certificate of an evaluation pass: which ids the epoch plans, their count and checksum,
and the error that names what is missing or duplicated (docs/architecture.md, "Evaluation").

The checksum of a set of ids is the sum of a 31-bit mix (SplitMix64's finaliser, top 31 bits)
of each id: order-free, so each rank sums its own rows and the ranks' sums add up, and a
missing id, a duplicated one or one swapped for another changes it (unless the changes cancel
exactly, about a 1 in 2**31 chance for arbitrary changes). Up to 2**32 ids the sum fits an
int64. The count and the checksum together are the certificate; ``diagnose`` turns per-id
delivery counts into the numbers an ``EvalCertificateError`` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from loader.plan.partition import plan_epoch

if TYPE_CHECKING:
    from loader.dataset import ShardDataset

__all__ = ["Certificate", "EvalCertificateError", "diagnose", "id_checksum", "planned_ids"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 20
_SHOWN = 5


class EvalCertificateError(RuntimeError):
    """An evaluation pass that did not see every planned sample exactly once; the message says
    how many are missing and how many duplicated, with the first few ids of each."""

    def __init__(self, message: str, *, missing: int, duplicated: int) -> None:
        super().__init__(message)
        self.missing = missing
        self.duplicated = duplicated


@dataclass(frozen=True)
class Certificate:
    """How many rows a pass holds and the checksum of their ids."""

    count: int
    checksum: int

    @classmethod
    def of(cls, ids: np.ndarray) -> Certificate:
        return cls(int(ids.size), id_checksum(ids))


def id_checksum(ids: np.ndarray) -> int:
    """The order-free checksum of ``ids`` (non-negative integers): the sum of each id's 31-bit
    mix, as a Python int."""
    flat = np.asarray(ids).ravel()
    total = 0
    for start in range(0, flat.size, _CHUNK):
        z = flat[start : start + _CHUNK].astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        total += int((z >> np.uint64(33)).sum(dtype=np.uint64))
    return total


def planned_ids(dataset: ShardDataset, epoch: int, num_workers: int) -> np.ndarray:
    """The sorted global ids epoch ``epoch`` delivers over all ranks: every id, less the ones
    the ``"drop"`` policy leaves out (which depend on the epoch and the topology)."""
    total = dataset.num_samples
    if dataset.even != "drop":
        return np.arange(total, dtype=np.int64)
    world = dataset.topology(num_workers).world_size
    plans = plan_epoch(
        [s.nsamples for s in dataset.source.shards],
        seed=dataset.seed,
        epoch=epoch,
        world_size=world,
        num_workers=num_workers,
        batch_size=dataset.batch_size,
        even="drop",
    )
    keep = np.zeros(total, dtype=bool)
    for rank in plans:
        for plan in rank:
            for seg in plan.segments:
                keep[seg.first_id : seg.first_id + len(seg)] = True
    return np.flatnonzero(keep).astype(np.int64)


def diagnose(counts: np.ndarray, planned: np.ndarray, ranks: int) -> EvalCertificateError:
    """The error for per-id delivery ``counts`` (over all ranks, one per global id) against the
    ``planned`` ids: how many planned ids no rank delivered, and how many rows repeat an id or
    carry one the epoch does not plan."""
    expected = np.zeros(counts.size, dtype=bool)
    expected[planned] = True
    missing_ids = np.flatnonzero(expected & (counts == 0))
    extra = np.where(expected, np.maximum(counts - 1, 0), counts)
    duplicated_ids = np.flatnonzero(extra)
    missing, duplicated = int(missing_ids.size), int(extra.sum())
    parts = [
        f"{missing} missing" + _ids(missing_ids),
        f"{duplicated} duplicated" + _ids(duplicated_ids),
    ]
    message = (
        f"expected each of the epoch's {planned.size} planned samples exactly once over "
        f"{ranks} rank(s), got {int(counts.sum())} rows: {', '.join(parts)}. The result would be "
        "wrong, so none is given: call update() for every batch of one whole epoch of the "
        "loader on every rank (no resume mid-epoch, no skipped bad samples)"
    )
    return EvalCertificateError(message, missing=missing, duplicated=duplicated)


def _ids(ids: np.ndarray) -> str:
    if not ids.size:
        return ""
    shown = ", ".join(str(int(i)) for i in ids[:_SHOWN])
    return f" (ids {shown}{', ...' if ids.size > _SHOWN else ''})"
