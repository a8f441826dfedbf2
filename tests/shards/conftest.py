"""Fixtures of the shard builder tests; the helpers they use are in ``tests.shards.helpers``."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shards.build import build_shards
from shards.plan import SizingOptions
from tests.shards.helpers import Quirky, make_plain, make_quirky, quick_options


@pytest.fixture(scope="session")
def quirky(tmp_path_factory: pytest.TempPathFactory) -> Quirky:
    return make_quirky(tmp_path_factory.mktemp("quirky"))


@dataclass(frozen=True)
class Built:
    out: Path
    summary: dict[str, object]


@pytest.fixture(scope="session")
def quirky_built(quirky: Quirky, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The quirky folder built once (3 shards, seed 0, ``--against`` the val folder).

    Read-only for tests: a test that damages a build copies it first (``copy_build``).
    """
    out = tmp_path_factory.mktemp("quirky_out") / "out"
    opts = quick_options(sizing=SizingOptions(num_shards=3), against=str(quirky.against))
    return Built(out, build_shards(quirky.root, out, opts))


@pytest.fixture
def copy_build(tmp_path: Path) -> Callable[[Path], Path]:
    def copy(src: Path) -> Path:
        dest = tmp_path / "copy"
        shutil.copytree(src, dest)
        return dest

    return copy


@pytest.fixture(scope="session")
def plain_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """60 tiny clean JPEGs in 4 classes (read-only for tests)."""
    root = tmp_path_factory.mktemp("plain") / "src"
    make_plain(root, 60, 4)
    yield root
