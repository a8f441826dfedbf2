"""Fixtures of the transform tests: shards of real (tiny) JPEGs."""

from __future__ import annotations

import pytest

from tests.loader.helpers import jpeg_bytes, write_test_shards
from tests.loader.transforms.helpers import SIZES


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(
        write_test_shards(tmp_path_factory.mktemp("tf") / "data", SIZES, image_bytes=jpeg_bytes)
    )
