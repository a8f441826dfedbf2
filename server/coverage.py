"""A job's delivery counts over all its ranks, from the union of their id bitmaps.

Each reporting process sends, with its counters, the ids it delivered in its current epoch as
a compressed bitmap, plus that epoch's delivered and padded counts (``loader.StatsReporter``
with ``num_samples``). Summing per-rank counts is wrong twice over: every rank misses the
other ranks' samples, so ``missing`` adds up to ``(world - 1) x num_samples``, and two ranks
reading the same samples each see every id once, so no duplicate shows. Instead, for the
job's current epoch:

- the processes taken are those that reported within ``stale_s`` of the job's newest report
  (a restarted process's predecessor drops out) and are in the newest epoch any of them is in;
- after a resume (``resumed_at_step``), the processes that stopped before the newest resumed
  run started are its past, not its peers: they are left out at once (the resumed run's
  bitmaps start from the checkpoint's merged ids, so they already hold what came before);
- ``unique`` is the number of ids in the union of their bitmaps, ``delivered`` and ``padded``
  the sums of theirs, ``duplicates = delivered - unique``, ``missing = num_samples - unique``.

Exactly once across ranks therefore shows as 0 duplicates and 0 missing, and two processes
that both read rank 0's share show rank 0's samples as duplicates and rank 1's as missing. A
rank still in the previous epoch counts as not yet delivering (its ids show as missing until
it catches up). Cost: O(processes x num_samples / 8) bytes per summary.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from loader.tracker import SeenError, read_packed_seen
from server.jobs import RankState, summarize
from server.sources import job_sources

if TYPE_CHECKING:
    from server.store import Store

__all__ = ["CoverageError", "job_summary", "merge_seen", "read_coverage"]

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class CoverageError(ValueError):
    """A report's ``coverage`` that cannot be used; the message names the field and value."""


def _ones(packed: np.ndarray) -> int:
    return int(_POPCOUNT[packed].sum(dtype=np.int64))


def read_coverage(coverage: Mapping[str, Any], max_samples: int) -> bytes:
    """Check one report's ``coverage`` (``epoch``, ``num_samples``, ``delivered``, ``padded``,
    ``seen``) and return the bitmap as the store keeps it (compressed bytes).

    ``CoverageError`` for ``num_samples`` above ``max_samples``, a ``seen`` that is not
    base64 of a bitmap of ``num_samples`` ids, or fewer ``delivered`` than ids in it.
    """
    num_samples = int(coverage["num_samples"])
    if num_samples > max_samples:
        raise CoverageError(
            f"expected coverage.num_samples <= {max_samples} (this service's job_max_samples), "
            f"got num_samples={num_samples}; send no coverage for datasets this large"
        )
    try:
        blob = base64.b64decode(str(coverage["seen"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CoverageError(f"expected base64 in coverage.seen, got an error ({exc})") from None
    try:
        unique = _ones(read_packed_seen(blob, num_samples))
    except SeenError as exc:
        raise CoverageError(f"coverage.seen: {exc}") from None
    if int(coverage["delivered"]) < unique:
        raise CoverageError(
            f"expected coverage.delivered >= the {unique} ids in coverage.seen, got "
            f"delivered={coverage['delivered']}"
        )
    return blob


def merge_seen(rows: Sequence[tuple[RankState, bytes]], *, stale_s: float) -> dict[str, Any] | None:
    """The job's delivery counts over its processes' bitmaps (module docstring); None when no
    process sent one. Processes that disagree on ``num_samples`` (another dataset under the
    same job name) give a document with ``error`` and no counts."""
    rows = _since_newest_resume([(s, blob) for s, blob in rows if s.coverage])
    covered = [(s.last_at, s.coverage, blob) for s, blob in rows if s.coverage]
    if not covered:
        return None
    newest = max(at for at, _, _ in covered)
    live = [(c, b) for at, c, b in covered if at >= newest - stale_s]
    epoch = max(int(c["epoch"]) for c, _ in live)
    current = [(c, b) for c, b in live if int(c["epoch"]) == epoch]
    sizes = {int(c["num_samples"]) for c, _ in current}
    if len(sizes) != 1:
        return {
            "scope": "merged",
            "epoch": epoch,
            "error": f"expected one num_samples across ranks, got {sorted(sizes)}",
        }
    num_samples = sizes.pop()
    union = np.zeros((num_samples + 7) // 8, dtype=np.uint8)
    delivered = padded = 0
    for coverage, blob in current:
        try:
            union |= read_packed_seen(blob, num_samples)
        except SeenError:
            continue  # checked when it arrived; a damaged row is left out, not trusted
        delivered += int(coverage["delivered"])
        padded += int(coverage["padded"])
    unique = _ones(union)
    return {
        "scope": "merged",
        "epoch": epoch,
        "reporters": len(current),
        "num_samples": num_samples,
        "delivered": delivered,
        "unique": unique,
        "duplicates": delivered - unique,
        "missing": num_samples - unique,
        "padded": padded,
    }


def _since_newest_resume(
    rows: list[tuple[RankState, bytes]],
) -> list[tuple[RankState, bytes]]:
    steps = [s.resumed_at_step for s, _ in rows if s.resumed_at_step is not None]
    if not steps:
        return rows
    newest = max(steps)
    start = min(s.first_at for s, _ in rows if s.resumed_at_step == newest)
    return [(s, b) for s, b in rows if s.last_at >= start]


def job_summary(store: Store, job: str, *, now: float, stale_s: float) -> dict[str, Any]:
    """``server.jobs.summarize`` with the job's counts merged across ranks, plus ``sources``
    (a mix's counts per source, ``server.sources.job_sources``): what the JSON API and
    ``/metrics`` both show."""
    merged = merge_seen(store.job_seen(job), stale_s=stale_s)
    ranks = store.job_ranks(job)
    doc = summarize(job, ranks, now=now, stale_s=stale_s, merged=merged)
    doc["sources"] = job_sources(ranks)
    return doc
