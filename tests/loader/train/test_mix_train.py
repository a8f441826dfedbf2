"""``shardfeed train --mixup A --cutmix A``: mixed batches on the device, seeded per batch, so
two runs with one seed take the same steps; a bad alpha is one line and a non-zero exit."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from loader.train.loop import train
from loader.train.options import TrainOptions
from shards.build import BuildOptions, build_shards
from shards.plan import SizingOptions
from shards.sample import make_sample


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("mix")
    make_sample(base / "src", images=96, classes=3, seed=1, size="tiny")
    build_shards(
        base / "src",
        base / "shards",
        BuildOptions(sizing=SizingOptions(num_shards=3), show_progress=False),
    )
    return base / "shards"


def test_mixup_and_cutmix_train_reproducibly(shards: Path) -> None:
    options = TrainOptions(
        shards=str(shards),
        device="cpu",
        batch_size=16,
        workers=2,
        image_size=32,
        mixup=0.8,
        cutmix=1.0,
        seed=5,
    )
    first, again = train(options), train(options)
    assert first[0].steps == again[0].steps == 6
    assert all(math.isfinite(x) for x in first[0].step_losses)
    assert first[0].step_losses == again[0].step_losses
    plain = train(TrainOptions(shards=str(shards), device="cpu", batch_size=16, workers=2,
                               image_size=32, seed=5))  # fmt: skip
    assert plain[0].step_losses != first[0].step_losses
    assert first[0].duplicates == first[0].missing == 0


def test_a_negative_alpha_is_one_line_and_exit_2(shards: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "train", "--shards", str(shards), "--mixup", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "expected --mixup >= 0, got --mixup=-1.0" in proc.stderr
