"""The one JSON policy for results, events and errors: what JSON cannot hold becomes ``null``.

JSON has no NaN or infinity, and ``json.dumps`` writes them as bare ``NaN``/``Infinity``, which
browsers and most parsers refuse. Everything the bench, the service and the reporter emit goes
through ``json_safe`` first, so a figure that could not be computed (a rate over zero time, a
median of nothing) reads as ``null`` everywhere, never as a string in one place and a crash in
another.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: NaN and infinities as ``None``, NumPy (and torch) scalars
    unwrapped, tuples as lists, mapping keys as strings, anything else unknown as its ``str``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | str):
        return value
    if not isinstance(value, int | float) and callable(getattr(value, "item", None)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, int):
        return int(value)
    return str(value)


def dumps(value: Any) -> str:
    """``json.dumps(json_safe(value))``, refusing (rather than writing) anything non-standard."""
    return json.dumps(json_safe(value), allow_nan=False)
