"""The bad-sample policy: one object, used by the CPU workers and by the device decoder.

A bad sample is one whose bytes do not decode or whose label is missing or outside the
manifest's classes (docs/architecture.md, "Hardening"). With ``"raise"`` the first one raises
``BadSampleError``; with ``"skip"`` it is logged, replaced by a copy of another sample of its
batch flagged ``padded`` (so every rank still yields its planned batches), and counted.

The skip budget has one unit everywhere: **bad samples skipped per epoch by the process that
finds them**. On the CPU path that process is a DataLoader worker (or the main process with
``num_workers=0``); with ``decode="device"`` it is the training process's ``DevicePrefetcher``,
whose count restarts with each pass (one pass = one epoch). ``budget + 1`` skips in that
epoch raise ``BadSampleError``. Each process owns its ``SkipCounter``; nothing is shared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from loader._checks import check_int
from loader.remote.redact import redact

__all__ = ["BAD_SAMPLE_POLICIES", "BadSampleError", "BadSamplePolicy", "SkipCounter"]

log = logging.getLogger("shardfeed.loader")
BAD_SAMPLE_POLICIES = ("skip", "raise")


class BadSampleError(ValueError):
    """A sample that cannot be delivered; the message names the shard, member and offset."""


@dataclass(frozen=True)
class BadSamplePolicy:
    """``policy`` (``"skip"`` or ``"raise"``) and ``budget`` (skips per epoch per process)."""

    policy: str = "skip"
    budget: int = 100

    def __post_init__(self) -> None:
        if self.policy not in BAD_SAMPLE_POLICIES:
            raise ValueError(
                f"expected bad_samples in {BAD_SAMPLE_POLICIES}, got bad_samples={self.policy!r}"
            )
        check_int("skip_budget", self.budget, 0)

    @classmethod
    def of(cls, owner: object) -> BadSamplePolicy:
        """The policy of ``owner`` (a dataset with a ``bad_sample_policy``), else the default."""
        policy = getattr(owner, "bad_sample_policy", None)
        return policy if isinstance(policy, BadSamplePolicy) else cls()

    def counter(self) -> SkipCounter:
        """A fresh count for one epoch of one process."""
        return SkipCounter(self)


class SkipCounter:
    """The skips of one epoch in one process, under ``policy``. Not shared between processes."""

    def __init__(self, policy: BadSamplePolicy) -> None:
        self.policy = policy
        self.skipped = 0

    def bad(self, where: str, exc: BaseException | str) -> None:
        """Handle one bad sample found at ``where`` (shard, member, offset or id): raise under
        ``"raise"`` or past the budget, else warn and count it. URLs in either are redacted."""
        where, exc = redact(where), redact(exc)
        if self.policy.policy == "raise":
            raise BadSampleError(f"bad sample in {where}: {exc}")
        self.skipped += 1
        log.warning("skipping bad sample in %s: %s", where, exc)
        if self.skipped > self.policy.budget:
            raise BadSampleError(
                f"more than skip_budget={self.policy.budget} bad samples in one epoch of one "
                f"process; last in {where}: {exc}"
            )
