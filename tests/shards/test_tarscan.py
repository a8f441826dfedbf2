"""Tests for loader/tarscan.py: header scans checked against the tarfile module and webdataset."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pytest
import webdataset as wds
from webdataset.tariterators import base_plus_ext

from shards.format import end_of_archive, padding, read_index, tar_member_header
from shards.tarscan import (
    Member,
    ShardFormatError,
    build_index,
    group_samples,
    header_name,
    iter_members,
    parse_label,
    scan_buffer,
    scan_members,
    split_key,
)
from tests.loader.helpers import write_test_shards

LONG_DIR = "d" * 120
FILES = [
    ("a.jpg", b"\xff\xd8\xff" + b"x" * 700),
    ("a.cls", b"3"),
    (f"{LONG_DIR}/b.png", b"\x89PNG\r\n\x1a\n" + b"y" * 30),
    ("b" * 150 + ".cls", b"4"),
    ("caf\u00e9.json", b"{}"),
    ("empty.txt", b""),
]


class _NoSeek(io.RawIOBase):
    """A stream that cannot seek, like a socket."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b: Any) -> int:
        data = self._f.read(min(len(b), 100))
        b[: len(data)] = data
        return len(data)


def _no_seek(data: bytes) -> BinaryIO:
    return cast(BinaryIO, io.BufferedReader(cast(Any, _NoSeek(data))))


def _tar(files: list[tuple[str, bytes]], fmt: int, **kwargs: object) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, **kwargs) as tf:  # type: ignore[call-overload]
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, kind in (("somedir", tarfile.DIRTYPE), ("link.jpg", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "a.jpg"
            tf.addfile(info)
    return out.getvalue()


def _tarfile_view(data: bytes) -> list[Member]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [Member(m.name, m.offset, m.offset_data, m.size) for m in tf if m.isreg()]


def _all_scans(data: bytes, url: str = "t.tar") -> list[list[Member]]:
    return [
        scan_buffer(data, url),
        scan_buffer(memoryview(data), url),
        scan_members(io.BytesIO(data), url),
        scan_members(_no_seek(data), url),
    ]


def _header(name: str, size: int, *, size_field: bytes | None = None) -> bytes:
    block = bytearray(tar_member_header(name, size))
    if size_field is not None:
        block[124:136] = size_field
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def _member(name: str, payload: bytes) -> bytes:
    return tar_member_header(name, len(payload)) + payload + padding(len(payload))


@pytest.mark.parametrize(
    "fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=str
)
def test_scan_matches_tarfile(fmt: int) -> None:
    files = FILES if fmt != tarfile.USTAR_FORMAT else [f for f in FILES if len(f[0]) < 100]
    files = files + [(f"{LONG_DIR}/c.webp", b"RIFF0000WEBP")]
    data = _tar(files, fmt)
    expected = _tarfile_view(data)
    assert [m.name for m in expected] == [n for n, _ in files]
    for scanned in _all_scans(data):
        assert scanned == expected


def test_gnu_long_names_and_pax_records_are_applied() -> None:
    gnu = _tar(FILES, tarfile.GNU_FORMAT)
    assert b"././@LongLink" in gnu
    pax = _tar(FILES, tarfile.PAX_FORMAT)
    for data in (gnu, pax):
        names = [m.name for m in scan_buffer(data, "t.tar")]
        assert names == [n for n, _ in FILES]
        member = scan_buffer(data, "t.tar")[3]
        assert member.data_offset > member.offset + 512, "offset must cover the extended header"


def test_pax_global_header_is_skipped_and_offsets_match_tarfile() -> None:
    data = _tar(FILES[:2], tarfile.PAX_FORMAT, pax_headers={"comment": "made by a test"})
    assert data[156:157] == b"g"
    members = scan_buffer(data, "t.tar")
    assert members == _tarfile_view(data)
    assert members[0].offset == 1024, "the global header belongs to no member"


def test_base256_size_and_pax_size_override() -> None:
    payload = b"z" * 600
    base256 = b"\x80" + (600).to_bytes(11, "big")
    records = b"12 size=600\n"
    pax = bytearray(_header("PaxHeader", len(records)))
    pax[156] = ord("x")
    pax[148:156] = b" " * 8
    pax[148:156] = f"{sum(pax):06o}\0 ".encode()
    data = _header("k.jpg", 0, size_field=base256) + payload + padding(600)
    data += bytes(pax) + records + padding(len(records))
    data += _header("m.jpg", 0) + payload + padding(600) + end_of_archive()
    members = scan_buffer(data, "t.tar")
    assert [(m.name, m.size) for m in members] == [("k.jpg", 600), ("m.jpg", 600)]
    assert members[1].offset == 1536 and members[1].data_offset == 1536 + 1536
    assert members == _tarfile_view(data)


def test_bad_checksum_names_url_and_offset() -> None:
    data = bytearray(_member("a.jpg", b"abc") + _member("a.cls", b"1") + end_of_archive())
    data[1024 + 10] ^= 0x01
    for scan in (
        lambda: scan_buffer(bytes(data), "s3://b/x.tar"),
        lambda: scan_members(io.BytesIO(bytes(data)), "s3://b/x.tar"),
    ):
        with pytest.raises(
            ShardFormatError, match=r"s3://b/x\.tar: bad tar header checksum at byte 1024"
        ):
            scan()


def test_not_a_tar_file() -> None:
    with pytest.raises(ShardFormatError, match="byte 0"):
        scan_buffer(b"\x89PNG" + bytes(range(256)) * 4, "img.png")


def test_bad_octal_size() -> None:
    data = _header("a.jpg", 0, size_field=b"12x4\0\0\0\0\0\0\0\0") + end_of_archive()
    with pytest.raises(ShardFormatError, match="expected an octal size.*byte 0"):
        scan_buffer(data, "t.tar")


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (512 + 100, r"ends inside member 'a\.jpg' \(header at byte 0"),
        (1024 + 200, "ends at byte 1224 inside a header"),
        (2048, "ends at byte 2048 without the end-of-archive blocks"),
    ],
)
def test_truncated_archive(cut: int, message: str) -> None:
    data = (_member("a.jpg", b"j" * 300) + _member("a.cls", b"1") + end_of_archive())[:cut]
    for scan in (
        lambda: scan_buffer(data, "http://h/t.tar"),
        lambda: scan_members(io.BytesIO(data), "http://h/t.tar"),
        lambda: scan_members(_no_seek(data), "http://h/t.tar"),
    ):
        with pytest.raises(ShardFormatError, match=r"http://h/t\.tar: .*" + message):
            scan()


def test_one_zero_block_ends_the_archive_and_empty_archive() -> None:
    data = _member("a.jpg", b"j") + bytes(512)
    assert [m.name for m in scan_buffer(data, "t")] == ["a.jpg"]
    assert scan_buffer(end_of_archive(), "t") == []


def test_iter_members_returns_wanted_payloads_only() -> None:
    data = _tar(FILES, tarfile.PAX_FORMAT)
    got = list(iter_members(io.BytesIO(data), "t", want=lambda n: n.endswith(".cls")))
    assert [m for m, _ in got] == _tarfile_view(data)
    payloads = {m.name: p for m, p in got}
    assert payloads["a.cls"] == b"3" and payloads["b" * 150 + ".cls"] == b"4"
    assert payloads["a.jpg"] is None and payloads["empty.txt"] is None


@pytest.mark.parametrize(
    "name",
    ["a.jpg", "a.b.c", "dir/k.jpg", "x.y/k.tar.gz", "noext", ".hidden", "k.", "a/b/", "__meta__"],
)
def test_split_key_agrees_with_webdataset(name: str) -> None:
    key, suffix = base_plus_ext(name)
    if name == "__meta__" or key is None:
        assert split_key(name) is None
    else:
        assert split_key(name) == (key, suffix.lower())


def _m(name: str, offset: int) -> Member:
    return Member(name, offset, offset + 512, 10)


def test_group_samples_keys_and_parts() -> None:
    members = [
        _m("dir/k1.cls", 0),
        _m("dir/k1.JPG", 1024),
        _m("dir/k1.json", 2048),
        _m("k2.seg.png", 3072),
        _m("k2.cls", 4096),
        _m("__readme__", 5120),
        _m("k3.webp", 6144),
        _m("k2.jpeg", 7168),
    ]
    samples = group_samples(members)
    assert [s.key for s in samples] == ["dir/k1", "k2", "k3", "k2"]
    first = samples[0]
    assert first.image == members[1] and first.cls == members[0] and first.json == members[2]
    assert first.offset == 0 and first.end == 2048 + 512 + 512
    assert samples[1].image is None, "'seg.png' is not an image suffix"
    assert samples[1].cls == members[4]
    assert samples[2].cls is None and samples[3].image == members[7]
    assert group_samples([]) == []


def test_group_samples_rejects_duplicate_suffix() -> None:
    with pytest.raises(ShardFormatError, match=r"u\.tar: sample 'k' has two 'jpg' members.*3072"):
        group_samples([_m("k.jpg", 0), _m("k.cls", 1024), _m("k.JPG", 3072)], url="u.tar")


def test_build_index_equals_sidecar(tmp_path: Path) -> None:
    write_test_shards(tmp_path, [5])
    data = (tmp_path / "shard-000000.tar").read_bytes()
    samples = group_samples(scan_buffer(data, "t"))
    labels = [
        parse_label(data[s.cls.data_offset : s.cls.data_offset + s.cls.size])
        for s in samples
        if s.cls
    ]
    index = build_index(samples, labels)
    sidecar = read_index((tmp_path / "shard-000000.idx.npy").read_bytes())
    assert np.array_equal(index, sidecar)
    assert [s.key for s in samples] == [f"{g:09d}" for g in range(5)]


def test_build_index_missing_parts_and_bad_input() -> None:
    samples = group_samples([_m("a.json", 0), _m("b.png", 1024), _m("b.cls", 2048)])
    index = build_index(samples, [-1, 2])
    assert index["image_offset"].tolist() == [-1, 1536]
    assert index["image_size"].tolist() == [0, 10]
    assert index["label"].tolist() == [-1, 2]
    assert index["end"].tolist() == [1024, 3072]
    assert len(build_index([], [])) == 0
    with pytest.raises(ValueError, match="samples=2 labels=1"):
        build_index(samples, [1])


@pytest.mark.parametrize(
    ("payload", "label"),
    [
        (b"7", 7),
        (b" 12\n", 12),
        (b"0", 0),
        (b"", -1),
        (b"-1", -1),
        (b"cat", -1),
        (b"1.5", -1),
        (b"\xd9\xa3", -1),
        (b"9223372036854775807", 2**63 - 1),
        (b"9223372036854775808", -1),
        (b"18446744073709551616", -1),
        (b"0000000000000000000000007", 7),
        (b"1" * 5000, -1),
    ],
)
def test_parse_label(payload: bytes, label: int) -> None:
    assert parse_label(payload) == label
    assert parse_label(memoryview(payload)) == label


def test_header_name() -> None:
    assert header_name(tar_member_header("000001.jpg", 5)) == "000001.jpg"
    assert header_name(bytes(512)) is None
    assert header_name(b"\x01" * 512) is None
    assert header_name(b"short") is None


@pytest.mark.parametrize("fmt", ["PAX_FORMAT", "GNU_FORMAT"])
def test_webdataset_shardwriter_shards(tmp_path: Path, fmt: str) -> None:
    pattern = str(tmp_path / "wds-%03d.tar")
    with wds.ShardWriter(pattern, maxcount=4, verbose=0, format=fmt) as sink:
        for i in range(6):
            key = f"s{i:03d}" + ("_" + "long" * 30 if i == 2 else "")
            sink.write({"__key__": key, "cls": i % 3, "jpg": b"\xff\xd8\xff" + bytes(50 * i)})
    url = str(tmp_path / "wds-000.tar")
    data = Path(url).read_bytes()
    samples = group_samples(scan_buffer(data, url), url=url)
    reference = list(wds.WebDataset(url, shardshuffle=False))
    assert [s.key for s in samples] == [r["__key__"] for r in reference]
    for sample, ref in zip(samples, reference, strict=True):
        assert sample.cls is not None and sample.image is not None
        assert sample.cls.offset < sample.image.offset, "ShardWriter writes .cls first"
        cls = data[sample.cls.data_offset : sample.cls.data_offset + sample.cls.size]
        assert parse_label(cls) == int(ref["cls"])
        image = data[sample.image.data_offset : sample.image.data_offset + sample.image.size]
        assert image == ref["jpg"]
