"""A decompression bomb in a source folder is skipped by the builder, at every verify level,
and recorded in the manifest's ``skipped`` (docs/architecture.md, section "Builds")."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from shards.build import BuildOptions, build_shards
from shards.manifest import Manifest
from shards.plan import SizingOptions
from tests.helpers import png_bomb


@pytest.mark.parametrize("verify", ["none", "header", "decode"])
def test_a_png_bomb_is_skipped_with_the_reason(tmp_path: Path, verify: str) -> None:
    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(2):
            ok, data = cv2.imencode(".png", np.full((6, 5, 3), 40 * i, np.uint8))
            assert ok
            (src / cls / f"{i}.png").write_bytes(data.tobytes())
    (src / "a" / "bomb.png").write_bytes(png_bomb())
    build_shards(
        src,
        tmp_path / "out",
        BuildOptions(sizing=SizingOptions(num_shards=1), show_progress=False, verify=verify),
    )
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.num_samples == 4
    [skipped] = manifest.skipped
    assert skipped["path"].endswith("bomb.png")
    assert "too many pixels" in skipped["reason"] and "12000x12000" in skipped["reason"]
