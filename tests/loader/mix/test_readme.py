"""The README's "Mixing datasets" example, run as written over small generated datasets."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.loader.helpers import jpeg_bytes, write_test_shards

README = Path(__file__).resolve().parents[3] / "README.md"


def example(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```python\n(.*?)```", text, re.S)
    assert found, f"README.md has no example block {name!r}"
    return found.group(1)


def test_the_mixing_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, sizes in (("imagenet", [20, 20]), ("web", [15]), ("curated", [3])):
        write_test_shards(tmp_path / "data" / name, sizes, image_bytes=jpeg_bytes)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(example("mixing"), str(README), "exec"), scope)  # noqa: S102
    state = scope["state"]
    assert isinstance(state, dict) and state["epoch"] == 1
    assert [s["quota"] for s in state["mix"]["sources"]] == [39, 16, 12]
    labels, sources = scope["labels"], scope["sources"]
    web = Counter(zip(sources.tolist(), labels.tolist(), strict=True))  # type: ignore[attr-defined]
    assert all(label >= 1000 for (s, label) in web if s == 1)
    assert os.getcwd() == str(tmp_path)
