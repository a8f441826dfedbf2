"""``len(loader)`` after a resume mid-epoch: the batches the rest of that epoch yields (for the
loader, its dataset and the iteration), then a whole epoch's again."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import ClosingDataLoader, ShardDataset, make_loader
from tests.loader.helpers import write_test_shards

SIZES = [7, 11, 3, 9]


def _resumed(
    manifest: Path, taken: int, workers: int, batch: int, new_workers: int, new_batch: int
) -> ClosingDataLoader:
    first = make_loader(
        manifest, batch_size=batch, num_workers=workers, image_size=0, prefetch_factor=1
    )
    it = iter(first)
    for _ in range(taken):
        next(it)
    state = first.state_dict()
    del it
    second = make_loader(
        manifest, batch_size=new_batch, num_workers=new_workers, image_size=0, prefetch_factor=1
    )
    second.load_state_dict(state)
    return second


def _check(loader: ClosingDataLoader) -> None:
    dataset = loader.dataset
    assert isinstance(dataset, ShardDataset)
    expected = len(loader)
    assert len(dataset) == expected
    it = iter(loader)
    assert len(it) == expected  # type: ignore[arg-type]
    assert len(list(it)) == expected
    assert len(loader) == dataset.batches_per_epoch(loader.num_workers)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(1, 6),
    new_batch=st.integers(1, 6),
    fraction=st.floats(0, 0.99),
)
def test_len_is_what_the_rest_of_the_epoch_yields(
    tmp_path_factory: pytest.TempPathFactory, batch: int, new_batch: int, fraction: float
) -> None:
    manifest = write_test_shards(tmp_path_factory.mktemp("len"), SIZES)
    full = -(-sum(SIZES) // batch)
    taken = int(fraction * full)
    loader = _resumed(manifest, taken, 0, batch, 0, new_batch)
    if new_batch == batch:
        assert len(loader) == full - taken
    _check(loader)


@pytest.mark.parametrize(("new_workers", "new_batch"), [(2, 3), (3, 2)])
def test_len_with_workers_same_and_other_topology(
    tmp_path: Path, new_workers: int, new_batch: int
) -> None:
    manifest = write_test_shards(tmp_path / "data", SIZES)
    loader = _resumed(manifest, 4, 2, 3, new_workers, new_batch)
    if (new_workers, new_batch) == (2, 3):
        assert len(loader) == -(-sum(SIZES) // 3) - 4
    _check(loader)


def test_a_fresh_loader_has_the_whole_epoch(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path / "data", SIZES)
    loader = make_loader(manifest, batch_size=4, num_workers=2, image_size=0)
    assert len(loader) == len(loader.dataset) == -(-sum(SIZES) // 4)
