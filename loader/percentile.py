"""The one percentile definition of shardfeed's figures (bench batch waits, reporter windows).

``percentile(values, q)`` is the ``q``-th percentile, ``q`` in 0..100, by linear interpolation
between the two nearest ranks (NumPy's default, "linear"), so p50 is the median. Every figure
named ``p50``/``p95``/``p99`` in the bench JSON, a job's stats and the service comes from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["percentile"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, linear interpolation) of ``values``; ``None`` when empty.

    ``ValueError`` for ``q`` outside 0..100 or a NaN among the values (a wait that could not be
    timed has no place in a percentile).
    """
    if not 0 <= q <= 100:
        raise ValueError(f"expected a percentile between 0 and 100, got q={q!r}")
    if len(values) == 0:
        return None
    array = np.asarray(values, dtype=np.float64)
    if np.isnan(array).any():
        raise ValueError(f"expected numbers without NaN, got {int(np.isnan(array).sum())} NaN")
    return float(np.percentile(array, q))
