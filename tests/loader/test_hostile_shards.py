"""Fuzz of the whole reading path over mutated and random tars (docs/architecture.md, section
"Format"): header scan, sidecar index and member extraction always end, within a bounded time,
either with the samples or with the project's own format error naming the shard and an offset;
labels and index rows past int64 are bad samples or our error, never an overflow.

The budget is fixed (examples, per-example deadline, a seed); hypothesis keeps its example
database in ``.hypothesis/``, which git ignores.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from loader.reader import ShardReader, ShardReadError
from loader.sources import ShardSource, resolve_source
from shards.format import end_of_archive, padding, tar_member_header
from shards.tarscan import (
    ShardFormatError,
    build_index,
    group_samples,
    iter_members,
    parse_label,
    scan_buffer,
)
from tests.loader.helpers import (
    HttpServers,
    jpeg_bytes,
    loader_over,
    track,
    write_test_shards,
)

URL_NAME = "shard-000000.tar"
BUDGET = settings(
    max_examples=120,
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _pax(kind: str, records: bytes) -> bytes:
    block = bytearray(tar_member_header("PaxHeader", len(records)))
    block[156] = ord(kind)
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block) + records + padding(len(records))


def _shard(sizes: list[int], pax_sizes: dict[int, tuple[str, int]]) -> bytes:
    """A shard of ``len(sizes)`` samples (jpg + cls); ``pax_sizes[i] = (kind, size)`` puts a
    PAX header of that kind (``x`` or ``g``) with that ``size`` record before sample ``i``."""
    out = io.BytesIO()
    for i, n in enumerate(sizes):
        if i in pax_sizes:
            kind, size = pax_sizes[i]
            body = f" size={size}\n"
            length = len(body) + len(str(len(body) + 3))
            out.write(_pax(kind, f"{length}{body}".encode()))
        image = b"\xff\xd8\xff" + bytes([i % 256]) * n
        for name, payload in ((f"{i:09d}.jpg", image), (f"{i:09d}.cls", str(i % 5).encode())):
            out.write(tar_member_header(name, len(payload)) + payload + padding(len(payload)))
    out.write(end_of_archive())
    return out.getvalue()


def _sidecar(data: bytes) -> bytes:
    samples = group_samples(scan_buffer(data, "x"))
    labels = [
        parse_label(data[s.cls.data_offset : s.cls.data_offset + s.cls.size])
        for s in samples
        if s.cls
    ]
    out = io.BytesIO()
    np.save(out, build_index(samples, labels), allow_pickle=False)
    return out.getvalue()


def _mutate(data: bytes, pokes: list[tuple[float, int]], cut: float | None) -> bytes:
    buf = bytearray(data)
    for where, value in pokes:
        if buf:
            buf[min(int(where * len(buf)), len(buf) - 1)] = value
    if cut is not None:
        del buf[int(cut * len(buf)) :]
    return bytes(buf)


def _read_all(tar: bytes, sidecar: bytes | None, nsamples: int) -> None:
    """Every reading path over these bytes; fails the test on anything but our errors."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / URL_NAME
        path.write_bytes(tar)
        index_path = None
        if sidecar is not None:
            index_path = Path(tmp) / "shard-000000.idx.npy"
            index_path.write_bytes(sidecar)
        url = str(path)
        for scan in (
            lambda: group_samples(scan_buffer(tar, url), url=url),
            lambda: list(iter_members(io.BytesIO(tar), url, want=lambda n: True)),
        ):
            try:
                scan()
            except ShardFormatError as exc:
                assert url in str(exc) and re.search(r"byte \d+", str(exc)), str(exc)
        source = ShardSource(url, nsamples, 0, str(index_path) if index_path else None, None, None)
        try:
            with ShardReader(source) as reader:
                for sample in reader.read(0, nsamples):
                    assert len(bytes(sample.data)) <= len(tar)
        except ShardReadError as exc:
            assert url in str(exc), str(exc)


sizes = st.lists(st.integers(0, 1500), min_size=1, max_size=4)
pokes = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6)
cuts = st.none() | st.floats(0, 1)
pax = st.dictionaries(
    st.integers(0, 1),
    st.tuples(st.sampled_from("xg"), st.integers(-5000, 0) | st.integers(0, 1 << 40)),
    max_size=2,
)


@pytest.mark.timeout(300)
@seed(20261130)
@BUDGET
@given(sizes=sizes, pax_sizes=pax, tar_pokes=pokes, tar_cut=cuts, idx_pokes=pokes, idx_cut=cuts)
def test_mutated_shards_end_with_our_error(
    sizes: list[int],
    pax_sizes: dict[int, tuple[str, int]],
    tar_pokes: list[tuple[float, int]],
    tar_cut: float | None,
    idx_pokes: list[tuple[float, int]],
    idx_cut: float | None,
) -> None:
    clean = _shard(sizes, {})
    sidecar = _sidecar(clean)
    tar = _mutate(_shard(sizes, pax_sizes), tar_pokes, tar_cut)
    _read_all(tar, _mutate(sidecar, idx_pokes, idx_cut), len(sizes))
    _read_all(tar, None, len(sizes))


@pytest.mark.timeout(300)
@seed(20261130)
@BUDGET
@given(data=st.binary(max_size=4096), nsamples=st.integers(0, 3))
def test_random_bytes_end_with_our_error(data: bytes, nsamples: int) -> None:
    _read_all(data, data, nsamples)
    _read_all(data, None, nsamples)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP with Range support, for the whole module."""
    root = tmp_path_factory.mktemp("served")
    servers = HttpServers()
    yield root, servers(root)
    servers.close()


_names = itertools.count()


def _read_remote(served: tuple[Path, str], tar: bytes, sidecar: bytes, nsamples: int) -> None:
    """The remote reading paths (ranged reads with the sidecar, the streamed header scan
    without it) over these bytes; fails the test on anything but our error."""
    root, base = served
    n = next(_names)
    (root / f"s{n}.tar").write_bytes(tar)
    (root / f"s{n}.idx.npy").write_bytes(sidecar)
    url = f"{base}s{n}.tar"
    for index_url in (f"{base}s{n}.idx.npy", None):
        source = ShardSource(url, nsamples, 0, index_url, None, len(tar))
        try:
            with ShardReader(source, chunk_bytes=1024) as reader:
                for sample in reader.read(0, nsamples):
                    assert len(bytes(sample.data)) <= len(tar)
        except ShardReadError as exc:
            assert url in str(exc), str(exc)


@pytest.mark.timeout(300)
@seed(20261130)
@settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes, pax_sizes=pax, tar_pokes=pokes, tar_cut=cuts, idx_pokes=pokes)
def test_mutated_remote_shards_end_with_our_error(
    served: tuple[Path, str],
    sizes: list[int],
    pax_sizes: dict[int, tuple[str, int]],
    tar_pokes: list[tuple[float, int]],
    tar_cut: float | None,
    idx_pokes: list[tuple[float, int]],
) -> None:
    sidecar = _mutate(_sidecar(_shard(sizes, {})), idx_pokes, None)
    tar = _mutate(_shard(sizes, pax_sizes), tar_pokes, tar_cut)
    _read_remote(served, tar, sidecar, len(sizes))


def _foreign_shard(path: Path, labels: list[bytes]) -> Path:
    """A shard without sidecar whose sample ``i`` has a real JPEG and the ``.cls`` ``labels[i]``."""
    out = io.BytesIO()
    for i, label in enumerate(labels):
        for name, payload in ((f"{i:09d}.jpg", jpeg_bytes(i)), (f"{i:09d}.cls", label)):
            out.write(tar_member_header(name, len(payload)) + payload + padding(len(payload)))
    out.write(end_of_archive())
    path.write_bytes(out.getvalue())
    return path


@pytest.mark.parametrize("label", [b"9223372036854775808", b"18446744073709551615", b"9" * 5000])
def test_a_label_past_int64_is_a_counted_bad_sample(tmp_path: Path, label: bytes) -> None:
    shard = _foreign_shard(tmp_path / "foreign.tar", [b"0", label, b"2", b"1"])
    with ShardReader(resolve_source(str(shard)).shards[0]) as reader:
        assert [s.label for s in reader.read(0, 4)] == [0, -1, 2, 1]
    servers = HttpServers()
    try:
        remote = resolve_source(servers(tmp_path) + "foreign.tar").shards[0]
        with ShardReader(remote, chunk_bytes=1024) as reader:
            assert [s.label for s in reader.read(0, 4)] == [0, -1, 2, 1]
    finally:
        servers.close()
    counts, _ = track(loader_over(str(shard), 2), 4)
    assert counts.missing == 1 and counts.delivered == 3 and counts.duplicates == 0
    with pytest.raises(ValueError, match=r"foreign\.tar.*no class label"):
        track(loader_over(str(shard), 0, bad_samples="raise"), 4)


def _overflowing_sidecar(tmp_path: Path) -> Path:
    """A build whose sidecar says sample 2's image is 2^63 - 1 - image_offset... bytes long:
    ``image_offset + image_size`` wraps around in int64."""
    manifest = write_test_shards(tmp_path, [5], image_bytes=jpeg_bytes)
    sidecar = tmp_path / "shard-000000.idx.npy"
    index = np.load(sidecar)
    index["image_size"][2] = 2**63 - 1
    np.save(sidecar, index, allow_pickle=False)
    doc = json.loads(manifest.read_text())
    doc["shardlist"][0]["index_sha256"] = hashlib.sha256(sidecar.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(doc))
    return manifest


def test_an_int64_overflow_in_an_index_row_is_refused(tmp_path: Path) -> None:
    manifest = _overflowing_sidecar(tmp_path / "data")
    pattern = r"shard-000000\.tar: sidecar .*idx\.npy is inconsistent at sample 2 .*image_size="
    shard = resolve_source(str(manifest)).shards[0]
    with pytest.raises(ShardReadError, match=pattern):
        list(ShardReader(shard).read(0, 5))
    with pytest.raises(ValueError, match=pattern):
        track(loader_over(str(manifest), 2), 5)
    servers = HttpServers()
    try:
        remote = resolve_source(servers(tmp_path / "data") + "manifest.json").shards[0]
        with pytest.raises(ShardReadError, match=r"http://.*" + pattern):
            list(ShardReader(remote).read(0, 5))
    finally:
        servers.close()


def test_a_link_with_a_size_hides_no_sample_from_the_loader(tmp_path: Path) -> None:
    """A symlink header whose size field says 1024, then real samples: the loader delivers what
    webdataset delivers (the link has no payload, as tarfile reads it)."""
    link = bytearray(tar_member_header("k.jpg", 1024))
    link[156:157], link[157:162] = b"2", b"a.jpg"
    link[148:156] = b" " * 8
    link[148:156] = f"{sum(link):06o}\0 ".encode()
    out = io.BytesIO()
    for i in range(3):
        if i == 1:
            out.write(bytes(link))
        for name, payload in ((f"{i:09d}.jpg", jpeg_bytes(i)), (f"{i:09d}.cls", b"1")):
            out.write(tar_member_header(name, len(payload)) + payload + padding(len(payload)))
    out.write(end_of_archive())
    shard = tmp_path / "linked.tar"
    shard.write_bytes(out.getvalue())
    keys = [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False)]
    assert keys == [f"{i:09d}" for i in range(3)]
    assert resolve_source(str(shard)).num_samples == 3
    counts, _ = track(loader_over(str(shard), 2), 3)
    assert counts.delivered == 3 and counts.missing == 0 and counts.duplicates == 0
