from __future__ import annotations

import pytest

from loader import Source
from loader.mix.source import MixError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of weight=, repeat=, samples= for source 'web', got none of them"),
        ({"weight": 0.5, "repeat": 2}, "got weight=0.5, repeat=2: give one"),
        ({"weight": 0}, "finite weight > 0 for source 'web'"),
        ({"weight": float("nan")}, "finite weight > 0"),
        ({"repeat": -1}, "finite repeat > 0"),
        ({"weight": "1"}, "a number weight > 0"),
        ({"samples": 1.5}, "an integer samples >= 0"),
        ({"samples": -1}, "samples >= 0 for source 'web'"),
        ({"weight": 1, "label_offset": -2}, "label_offset >= 0"),
        ({"weight": 1, "label_offset": 3, "class_map": {"a": 0}}, "label_offset or class_map"),
        ({"weight": 1, "bad_samples": "ignore"}, "bad_samples in"),
    ],
)
def test_bad_sources_are_refused_naming_the_source(kwargs: dict, message: str) -> None:
    with pytest.raises(MixError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Source("data/web", name="web", **kwargs)


def test_an_unnamed_source_is_named_by_its_location() -> None:
    with pytest.raises(MixError, match="source 'data/web/manifest.json'"):
        Source("data/web/manifest.json")
    assert Source(["a.tar", "b.tar"], weight=1).label == "'[2 shards]'"
