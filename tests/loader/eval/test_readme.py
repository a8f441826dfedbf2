"""The README's "Validation and exact evaluation" example, run as written over tiny shards."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.loader.helpers import jpeg_bytes, write_test_shards

README = Path(__file__).resolve().parents[3] / "README.md"
SIZES = [40, 23, 38]


def _example(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert found, f"README.md has no example block {name!r}"
    return found.group(1)


def test_exact_eval_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_test_shards(tmp_path / "data" / "val-shards", SIZES, image_bytes=jpeg_bytes)
    monkeypatch.chdir(tmp_path)
    exec(compile(_example("exact-eval"), "README.md", "exec"), {"__name__": "__main__"})
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(rf"top-1 0\.\d{{4}} over {sum(SIZES)} samples", line), line
