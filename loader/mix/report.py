"""Per-source counts as a stats report carries them (docs/architecture.md, "Service").

``StatsReporter.record(source_counts=...)`` takes a mapping of source name to that source's
counts (a ``SourceCounts`` or a mapping with ``delivered`` and any of ``quota``, ``unique``,
``duplicates``, ``missing``, ``padded``); ``named_counts`` builds it from ``MixTracker.counts()``
and the mix's sources. The limits here (``MAX_SOURCES`` sources, names of 1 to
``MAX_SOURCE_NAME`` characters without control characters) are the service's too
(``server.models``), so a report the reporter builds is never refused for its sources.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loader.mix.source import Source
    from loader.mix.tracker import SourceCounts

__all__ = [
    "MAX_SOURCES",
    "MAX_SOURCE_NAME",
    "SOURCE_FIELDS",
    "SOURCE_NAME_PATTERN",
    "named_counts",
    "source_report",
]

MAX_SOURCES = 64
MAX_SOURCE_NAME = 64
SOURCE_NAME_PATTERN = rf"^[^\x00-\x1f\x7f]{{1,{MAX_SOURCE_NAME}}}$"
SOURCE_FIELDS = ("quota", "delivered", "unique", "duplicates", "missing", "padded")
_NAME = re.compile(SOURCE_NAME_PATTERN)


def named_counts(
    counts: Sequence[SourceCounts], sources: Sequence[Source]
) -> dict[str, SourceCounts]:
    """``MixTracker.counts()`` keyed by each source's ``name`` (``source<i>`` for a source
    without one)."""
    if len(counts) != len(sources):
        raise ValueError(
            f"expected one count per source ({len(sources)}), got {len(counts)}: pass the "
            "tracker and the sources of one mix"
        )
    return {
        (src.name if src.name is not None else f"source{i}"): c
        for i, (src, c) in enumerate(zip(sources, counts, strict=True))
    }


def source_report(counts: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """``counts`` (name to a ``SourceCounts`` or a mapping) as plain integers of
    ``SOURCE_FIELDS``; ``ValueError`` naming the source for more than ``MAX_SOURCES`` sources,
    a name outside the rule, a row without ``delivered`` or a negative count."""
    if len(counts) > MAX_SOURCES:
        raise ValueError(
            f"expected at most {MAX_SOURCES} sources in source_counts, got {len(counts)}"
        )
    out: dict[str, dict[str, int]] = {}
    for name, row in counts.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"expected a source name of 1 to {MAX_SOURCE_NAME} characters without control "
                f"characters, got name={name!r}: rename the source"
            )
        raw = row.to_dict() if hasattr(row, "to_dict") else dict(row)
        if "delivered" not in raw:
            raise ValueError(f"expected 'delivered' in the counts of source {name!r}, got {raw}")
        values = {k: int(raw[k]) for k in SOURCE_FIELDS if raw.get(k) is not None}
        negative = {k: v for k, v in values.items() if v < 0}
        if negative:
            raise ValueError(f"expected counts >= 0 for source {name!r}, got {negative}")
        out[name] = values
    return out
