"""Argument checks shared by the loader: each raises ``ValueError`` in the project's one shape,
``expected X, got name=value``. The only home of such checks; the loader's constructors call
these rather than writing their own.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_int", "check_non_negative"]


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int, or raise ValueError naming it unless ``low <= value``
    (and ``value < high`` when ``high`` is given)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"expected an integer {name}, got {name}={value!r}")
    number = int(value)
    if number < low or (high is not None and number >= high):
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"expected {name} {bound}, got {name}={number}")
    return number


def check_non_negative(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise ValueError naming it unless it is a finite real
    number ``>= 0`` (a latency, a timeout)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"expected a number {name} >= 0, got {name}={value!r}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"expected a finite {name} >= 0, got {name}={value!r}")
    return number
