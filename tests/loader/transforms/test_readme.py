"""The README's "Your own augmentation" code runs as written, over ``data/shards`` built the way
the README's tour builds them (smaller)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shards.build import BuildOptions, build_shards
from shards.plan import SizingOptions
from shards.sample import make_sample

README = Path(__file__).resolve().parents[3] / "README.md"


def section_code(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    assert len(blocks) == 1, f"expected one python block in {title!r}, got {len(blocks)}"
    return str(blocks[0])


def test_your_own_augmentation_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_sample(tmp_path / "data" / "src", images=128, classes=4, seed=0, size="tiny")
    build_shards(
        tmp_path / "data" / "src",
        tmp_path / "data" / "shards",
        BuildOptions(sizing=SizingOptions(num_shards=2), show_progress=False),
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(section_code("Your own augmentation"), str(README), "exec"), namespace)
    assert namespace["batch"] is not None
