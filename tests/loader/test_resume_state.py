"""Resume states are validated, never trusted (``loader.resume.state``, ``.reconcile``): every
field's type and range, the per-worker batch counts against the bitmap, and the bitmaps'
decompression bounded by the length the dataset needs. A corrupted state is a one-line
``ResumeError``; with real DataLoader workers, a state that is accepted resumes exactly once."""

from __future__ import annotations

import copy
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.dataloader import ClosingDataLoader, make_loader
from loader.resume.state import LoaderState, ResumeError, unpack_bits
from loader.tracker import DuplicateTracker
from tests.loader.helpers import default_image_bytes, write_test_shards

SIZES = [9, 7, 12, 5, 8]
TOTAL = sum(SIZES)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_test_shards(tmp_path_factory.mktemp("state") / "data", SIZES))


def loader_of(source: str, num_workers: int = 2) -> ClosingDataLoader:
    return make_loader(
        source,
        batch_size=4,
        num_workers=num_workers,
        image_size=0,
        seed=7,
        multiprocessing_context="fork",
    )


@pytest.fixture(scope="module")
def stopped(manifest: str) -> tuple[dict[str, Any], list[int]]:
    """A state after 3 batches with 2 workers, and the ids those batches delivered."""
    loader = loader_of(manifest)
    got: list[int] = []
    for i, batch in enumerate(loader):
        got.extend(batch.ids[~batch.padded].tolist())
        if i == 2:
            break
    return loader.state_dict(), got


def _corrupt(state: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(state)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("batches", "0", 0), 100, "counts 100 batches"),
        (("batches", "0", 0), True, r"expected batches\['0'\]\[\] an int >= 0, got True"),
        (("batches", "0", 1), -1, r"an int >= 0, got -1"),
        (("batches", "0", 1), 1.0, r"an int >= 0, got 1.0"),
        (("batches", "0"), [1], "as a list of 2 counts"),
        (("batches", "01x"), [0, 0], "rank keys"),
        (("padded", "0", 0), 5, "counts .* batches"),
        (("ranks",), [0, 0], "repeats a rank"),
        (("ranks",), [3], r"ranks\[\] an int in 0..0"),
        (("topology", "world_size"), 10**12, "world_size an int in"),
        (("topology", "batch_size"), True, "batch_size an int >= 1"),
        (("topology", "even"), "maybe", "topology.even"),
        (("samples_taken",), -1, "samples_taken an int >= 0"),
        (("seed",), "7", "seed an int >= 0"),
        (("fingerprint",), None, "fingerprint as str"),
        (("version",), True, "version as an int"),
        (("epoch",), -1, "epoch an int >= 0"),
    ],
)
def test_each_corrupted_field_is_a_resume_error(
    manifest: str,
    stopped: tuple[dict[str, Any], list[int]],
    path: tuple[Any, ...],
    value: Any,
    match: str,
) -> None:
    state, _ = stopped
    with pytest.raises(ResumeError, match=match) as info:
        loader_of(manifest).load_state_dict(_corrupt(state, path, value))
    assert "\n" not in str(info.value)


def test_a_decompression_bomb_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(b"\0" * (900 << 20), 9)  # 900 MB of zeros in under 1 MB
    with pytest.raises(ResumeError, match="taken inflates to more than the 6 bytes of 41 samples"):
        unpack_bits(bomb, TOTAL, "taken")
    with pytest.raises(ResumeError, match="cut short"):
        unpack_bits(zlib.compress(b"\0" * 6)[:-6], TOTAL, "taken")
    with pytest.raises(ResumeError, match="1 more"):
        unpack_bits(zlib.compress(b"\0" * 6) + b"x", TOTAL, "taken")


def test_an_accepted_state_resumes_exactly_once(
    manifest: str, stopped: tuple[dict[str, Any], list[int]]
) -> None:
    state, first = stopped
    for workers in (2, 3):  # the same topology replays, another cuts afresh
        loader = loader_of(manifest, num_workers=workers)
        loader.load_state_dict(state)
        tracker = DuplicateTracker(TOTAL)
        tracker.update(first, [False] * len(first))
        for batch in loader:
            tracker.update(batch.ids, batch.padded)
        counts = tracker.end_epoch()
        assert (counts.duplicates, counts.missing, counts.unique) == (0, 0, TOTAL)


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=8), st.binary(max_size=16), st.lists(st.integers(-3, 300), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=3),
)  # fmt: skip


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_corrupted_field_is_a_resume_error_or_a_valid_state(
    stopped: tuple[dict[str, Any], list[int]], data: st.DataObject
) -> None:
    """Hypothesis replaces one field anywhere in a genuine state (or drops it): parsing raises
    ``ResumeError`` and nothing else, or gives a state whose fields have their promised types."""
    state, _ = stopped
    paths: list[tuple[Any, ...]] = [(k,) for k in state]
    paths += [("topology", k) for k in state["topology"]]
    paths += [("batches", "0", w) for w in range(2)] + [("padded", "0", w) for w in range(2)]
    path = data.draw(st.sampled_from(paths), label="path")
    doc = copy.deepcopy(state)
    if data.draw(st.booleans(), label="drop"):
        node = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    else:
        doc = _corrupt(state, path, data.draw(_VALUES, label="value"))
    try:
        parsed = LoaderState.from_dict(doc)
    except ResumeError:
        return
    assert all(type(c) is int and c >= 0 for counts in parsed.batches.values() for c in counts)
    assert all(type(r) is int for r in parsed.ranks)
    assert len(parsed.taken) == len(parsed.base) == parsed.num_samples


def test_a_state_without_padded_counts_still_loads(
    manifest: str, stopped: tuple[dict[str, Any], list[int]], tmp_path: Path
) -> None:
    """States saved before padded rows were counted are checked by bounds and still resume."""
    state, first = stopped
    old = {k: v for k, v in state.items() if k != "padded"}
    loader = loader_of(manifest)
    loader.load_state_dict(old)
    rest = [i for b in loader for i in b.ids[~b.padded].tolist()]
    assert sorted(first + rest) == list(range(TOTAL))
    with pytest.raises(ResumeError, match="counts 100 batches"):
        loader_of(manifest).load_state_dict(_corrupt(old, ("batches", "0", 0), 100))


def test_a_batch_of_only_fillers_counts_for_the_worker_that_made_it(tmp_path: Path) -> None:
    """Worker 1's last samples are bad: their fillers make batches of padding only, counted
    for worker 1 (not the worker that pads the rank), so a resume skips the right batches."""
    bad = set(range(24, 28))  # worker 0 reads ids 0..15, worker 1 ids 16..27
    manifest = write_test_shards(
        tmp_path,
        [28],
        image_bytes=lambda g: b"not an image" if g in bad else default_image_bytes(g),
    )
    options: dict[str, Any] = {
        "batch_size": 4, "num_workers": 2, "image_size": 0, "seed": 7, "shuffle_buffer": 0,
        "multiprocessing_context": "fork",
    }  # fmt: skip
    loader = make_loader(str(manifest), **options)
    first: list[int] = []
    for i, batch in enumerate(loader):
        first.extend(batch.ids[~batch.padded].tolist())
        if i == 5:  # worker 1's last batch (fillers only) was the 6th
            break
    state = loader.state_dict()
    assert state["batches"] == {"0": [3, 3]} and state["padded"] == {"0": [0, 4]}
    resumed = make_loader(str(manifest), **options)
    resumed.load_state_dict(state)
    rest = [i for b in resumed for i in b.ids[~b.padded].tolist()]
    assert sorted(first + rest) == sorted(set(range(28)) - bad)
