"""Tests for shards.format's index checks: ``check_index_rows`` and ``read_index_rows``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from shards.format import INDEX_DTYPE, check_index_rows, read_index_rows

INT64 = st.integers(-(2**63), 2**63 - 1)
SMALL = st.integers(-3, 5000)


def _rows(*rows: tuple[int, int, int, int, int]) -> np.ndarray:
    return np.array(list(rows), dtype=INDEX_DTYPE)


GOOD = _rows((0, 1536, 512, 100, 0), (1536, 3072, -1, 0, 1), (3072, 4608, 3584, 512, 2))


def test_good_rows_pass_and_empty_rows_pass() -> None:
    check_index_rows(GOOD, 4608 + 1024, "s.tar", "sidecar")
    check_index_rows(GOOD[:0], 0, "s.tar", "sidecar")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ((3072, 4608, 3584, 2**63 - 1, 2), "image_size=9223372036854775807"),
        ((3072, 4608, 2**63 - 10, 100, 2), "image_offset=9223372036854775798"),
        ((3072, 4608, 3584, -5, 2), "image_size=-5"),
        ((3072, 4608, -7, 100, 2), "image_offset=-7"),
        ((3072, 4608, -1, 10, 2), "image_size=10"),
        ((-(2**63), 4608, 3584, 10, 2), "offset=-9223372036854775808"),
        ((3072, 3072, 3072, 0, 2), "end=3072"),
        ((1000, 4608, 3584, 10, 2), "offset=1000"),
    ],
)
def test_overflowing_or_inconsistent_rows_are_named(
    row: tuple[int, int, int, int, int], field: str
) -> None:
    rows = np.concatenate([GOOD[:2], _rows(row)])
    pattern = r"shard s\.tar: sidecar x is inconsistent at sample 2"
    with pytest.raises(ValueError, match=pattern) as e:
        check_index_rows(rows, 4608 + 1024, "s.tar", "sidecar x")
    assert field in str(e.value)


def test_a_row_past_the_end_is_truncation() -> None:
    with pytest.raises(ValueError, match=r"s\.tar is truncated: it has 4000 bytes.*sample 2"):
        check_index_rows(GOOD, 4000, "s.tar", "sidecar")


@seed(20261203)
@settings(max_examples=400, deadline=None)
@given(
    rows=st.lists(st.tuples(*[SMALL | INT64] * 4), max_size=4),
    size=st.integers(0, 6000),
)
def test_accepted_rows_only_slice_inside_the_shard(
    rows: list[tuple[int, int, int, int]], size: int
) -> None:
    """Whatever int64 rows say, accepted ones describe ordered samples inside ``size`` bytes,
    each image inside its sample (checked with Python's unbounded integers)."""
    index = _rows(*[(*r, 0) for r in rows])
    try:
        check_index_rows(index, size, "s.tar", "sidecar")
    except ValueError as exc:
        assert "s.tar" in str(exc)
        return
    previous_end = 0
    for offset, end, image, image_size in rows:
        assert previous_end <= offset < end <= size
        if image == -1:
            assert image_size == 0
        else:
            assert offset <= image and 0 <= image_size and image + image_size <= end
        previous_end = end


def _npy(index: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, index, allow_pickle=False)
    return out.getvalue()


def test_read_index_rows_reads_only_the_header() -> None:
    data = _npy(GOOD)
    assert read_index_rows(io.BytesIO(data), len(data)) == 3
    with pytest.raises(ValueError, match="rows=3: the file is truncated"):
        read_index_rows(io.BytesIO(data[:-1]), len(data) - 1)
    huge = data.replace(b"(3,)", b"(10000000000000,)").replace(b" " * 13 + b"\n", b"\n")
    with pytest.raises(ValueError, match="rows=10000000000000"):
        read_index_rows(io.BytesIO(huge), len(huge))
    wrong = _npy(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="dtype"):
        read_index_rows(io.BytesIO(wrong), len(wrong))
    with pytest.raises(ValueError, match="unreadable"):
        read_index_rows(io.BytesIO(b"junk"), 4)
