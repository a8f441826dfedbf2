"""The transform bench modes (``loader.bench.transform_modes``): ``tar-aware-seeded`` and
``tar-aware-recipe`` run beside ``tar-aware`` in one ``run_bench``, deliver every sample once,
and the CPU recipe is a seeded function of its input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loader.bench import BenchConfig, run_bench
from loader.bench.transform_modes import JitterErase
from loader.bench.transformcost import measure_costs
from shards.build import BuildOptions, build_shards
from shards.plan import SizingOptions
from shards.sample import make_sample

IMAGES = 40
MODES = ("tar-aware", "tar-aware-seeded", "tar-aware-recipe")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("transform-modes")
    make_sample(root / "src", images=IMAGES, classes=3, size="tiny")
    build_shards(
        root / "src",
        root / "shards",
        BuildOptions(sizing=SizingOptions(num_shards=4), show_progress=False),
    )
    return root / "shards"


def test_the_transform_modes_run_beside_the_bare_loader(shards: Path) -> None:
    config = BenchConfig(
        folder=None, shards=str(shards), modes=MODES, workers=2, batch_size=8, image_size=32
    )
    doc = run_bench(config)
    for mode in MODES:
        result = doc["modes"][mode]
        assert result["status"] == "ok", result
        assert (result["samples"], result["duplicates"], result["missing"]) == (IMAGES, 0, 0)
        assert result["samples_per_s"] > 0


def test_without_decoding_the_transform_modes_do_not_apply(shards: Path) -> None:
    config = BenchConfig(
        folder=None, shards=str(shards), modes=MODES[1:], workers=1, batch_size=8, decode=False
    )
    doc = run_bench(config)
    for mode in MODES[1:]:
        assert doc["modes"][mode]["status"] == "not_applicable"
        assert "drop --decode none" in doc["modes"][mode]["reason"]


def test_the_recipe_is_seeded_in_place_and_erases_sometimes() -> None:
    base = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    recipe = JitterErase(erase_prob=1.0)
    np.random.seed(3)
    first = base.copy()
    assert recipe(first) is first
    np.random.seed(3)
    again = recipe(base.copy())
    assert np.array_equal(first, again) and not np.array_equal(first, base)
    with pytest.raises(ValueError, match="expected 0 <= jitter < 1"):
        JitterErase(jitter=1.5)


def test_transform_costs_are_measured_per_sample(shards: Path) -> None:
    doc = measure_costs(str(shards), image_size=32, samples=12)
    assert doc["samples"] == 12
    assert all(doc[k] > 0 for k in ("decode_us", "seed_us", "recipe_us"))
    assert doc["seed_share"] == pytest.approx(doc["seed_us"] / doc["decode_us"])
    with pytest.raises(ValueError, match="expected samples >= 1"):
        measure_costs(str(shards), samples=0)
