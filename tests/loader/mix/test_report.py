"""``named_counts``: a ``MixTracker``'s counts keyed by source name, as a report sends them."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader import Source
from loader.mix.report import named_counts, source_report
from loader.mix.tracker import SourceCounts


def counts(source: int) -> SourceCounts:
    return SourceCounts(source, quota=3, delivered=3, unique=3, duplicates=0, missing=0, padded=0)


def test_sources_are_named_by_name_or_position(tmp_path: Path) -> None:
    sources = [Source(tmp_path, weight=1, name="web"), Source(tmp_path, weight=1)]
    named = named_counts([counts(0), counts(1)], sources)
    assert list(named) == ["web", "source1"]
    assert source_report(named)["source1"] == {
        "quota": 3, "delivered": 3, "unique": 3, "duplicates": 0, "missing": 0, "padded": 0,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"one count per source \(2\), got 1"):
        named_counts([counts(0)], sources)
