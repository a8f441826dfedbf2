"""When a mode's ratio to the limit is a result and when it is noise (docs/architecture.md,
"Benchmark").

A mode's ``ratio_to_limit`` is its rate over the mean of the two limit runs just before and
just after it. A loader cannot beat the raw limit, so a ratio above ``RATIO_CEILING`` only says
the limit ran while the machine was busier; and when the two bracketing limit runs differ by
more than ``LIMIT_SPREAD`` (relative to the smaller), the machine's speed changed during the
mode and its ratio is not a measurement either. ``judge`` marks both as ``noisy`` and says
why, with the spread; the CLI table, the dashboard and the JSON show that instead of
presenting the figure as a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["LIMIT_SPREAD", "RATIO_CEILING", "judge", "limit_spread"]

RATIO_CEILING = 1.05
LIMIT_SPREAD = 0.15


def limit_spread(limits: Sequence[float]) -> float | None:
    """How far apart the bracketing limit runs are: ``(max - min) / min``; ``None`` when there
    are none or the slower one read nothing (then no ratio can be trusted)."""
    if not limits:
        return None
    low, high = min(limits), max(limits)
    if low <= 0:
        return None
    return (high - low) / low


def judge(ratio: float | None, limits: Sequence[float]) -> dict[str, Any]:
    """The verdict on one ratio taken against the limit runs ``limits`` (before, after):
    ``{"noisy": bool, "limit_spread": float | None, "noise": str | None}``, where ``noise``
    says why in words (``None`` when the figure stands)."""
    spread = limit_spread(limits)
    reasons = []
    if ratio is not None and ratio > RATIO_CEILING:
        reasons.append(f"ratio {ratio:.2f} above {RATIO_CEILING:.2f}: the limit ran busier")
    if spread is None and limits:
        reasons.append("a limit run read nothing")
    elif spread is not None and spread > LIMIT_SPREAD:
        reasons.append(
            f"limit runs before and after differ by {100 * spread:.0f}% "
            f"(more than {100 * LIMIT_SPREAD:.0f}%)"
        )
    return {
        "noisy": bool(reasons),
        "limit_spread": spread,
        "noise": "; ".join(reasons) if reasons else None,
    }
