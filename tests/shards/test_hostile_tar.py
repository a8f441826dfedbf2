"""Hostile tar headers: sizes that point backwards must be refused, never looped over; link,
directory and device headers that claim a payload must not hide members (tarfile and webdataset
are the reference)."""

from __future__ import annotations

import io
import tarfile
from itertools import islice

import pytest
from webdataset.tariterators import tar_file_iterator

from shards.format import end_of_archive, padding, tar_member_header
from shards.tarscan import ShardFormatError, group_samples, iter_members, scan_buffer


def _pax(kind: str, records: bytes) -> bytes:
    block = bytearray(tar_member_header("PaxHeader", len(records)))
    block[156] = ord(kind)
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block) + records + padding(len(records))


def _record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n"
    n = len(body) + 1
    n = len(body) + len(str(n))
    return f"{n}{body}".encode()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["g", "x"])
@pytest.mark.parametrize("size", ["-512", "-1", "-1024", "-9999999999"])
def test_negative_pax_size_is_refused_not_looped(kind: str, size: str) -> None:
    data = _pax(kind, _record("size", size))
    data += tar_member_header("a.jpg", 3) + b"abc" + padding(3) + end_of_archive()
    assert len(data) == 3072
    for scan in (
        lambda: list(islice(iter_members(io.BytesIO(data), "evil.tar"), 50)),
        lambda: scan_buffer(data, "evil.tar"),
    ):
        with pytest.raises(ShardFormatError, match=r"evil\.tar: .*PAX size.*byte 1024"):
            scan()


def test_record_helper_makes_valid_lengths() -> None:
    for value in ("-512", "5", "123456789"):
        rec = _record("size", value)
        assert int(rec.split(b" ", 1)[0]) == len(rec)


def _typed(name: str, size: int, kind: bytes, linkname: str = "") -> bytes:
    """A header of type ``kind`` whose size field says ``size``, with no payload after it."""
    block = bytearray(tar_member_header(name, size))
    block[156:157] = kind
    block[157 : 157 + len(linkname)] = linkname.encode()
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def _sample(key: str, image: bytes, label: int) -> bytes:
    out = b""
    for name, payload in ((f"{key}.jpg", image), (f"{key}.cls", str(label).encode())):
        out += tar_member_header(name, len(payload)) + payload + padding(len(payload))
    return out


def _webdataset_files(data: bytes) -> list[tuple[str, bytes]]:
    return [(f["fname"], f["data"]) for f in tar_file_iterator(io.BytesIO(data))]


def _tarfile_files(data: bytes) -> list[tuple[str, int, int]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isreg()]


_LINK_KINDS = {
    "hardlink": (b"1", "k0.jpg"),
    "symlink": (b"2", "k0.jpg"),
    "char-device": (b"3", ""),
    "block-device": (b"4", ""),
    "directory": (b"5", ""),
    "fifo": (b"6", ""),
    "v7-directory": (b"\0", ""),
}


@pytest.mark.parametrize("kind", sorted(_LINK_KINDS))
@pytest.mark.parametrize("claimed", [1, 512, 1024, 4096])
def test_link_with_a_size_hides_nothing(kind: str, claimed: int) -> None:
    """A link (or directory, device, FIFO) header whose size field is not 0, followed by real
    samples: tarfile, webdataset and our scans all see the same members, because such a header
    has no payload whatever its size says."""
    type_byte, target = _LINK_KINDS[kind]
    name = "d/" if kind == "v7-directory" else "k1.jpg"
    data = (
        _sample("k0", b"\xff\xd8\xff" + b"a" * 600, 0)
        + _typed(name, claimed, type_byte, target)
        + _sample("k1", b"\xff\xd8\xff" + b"b" * 700, 1)
        + _sample("k2", b"\xff\xd8\xff" + b"c" * 10, 2)
        + end_of_archive()
    )
    want = _tarfile_files(data)
    assert [n for n, _, _ in want] == ["k0.jpg", "k0.cls", "k1.jpg", "k1.cls", "k2.jpg", "k2.cls"]
    for members in (
        scan_buffer(data, "t.tar"),
        [m for m, _ in iter_members(io.BytesIO(data), "t.tar")],
    ):
        assert [(m.name, m.data_offset, m.size) for m in members] == want
        samples = group_samples(members, url="t.tar")
        assert [s.key for s in samples] == ["k0", "k1", "k2"]
    got = [(m.name, p) for m, p in iter_members(io.BytesIO(data), "t.tar", want=lambda n: True)]
    assert got == _webdataset_files(data)


@pytest.mark.parametrize("kind", [b"V", b"D", b"Z"])
def test_unknown_and_volume_types_skip_their_payload_like_tarfile(kind: bytes) -> None:
    """Types tarfile does not know (and GNU volume headers) keep their payload but are not
    regular files: skipped by webdataset, and by our scan."""
    payload = b"p" * 700
    data = (
        _typed("vol.jpg", len(payload), kind)
        + payload
        + padding(len(payload))
        + _sample("k1", b"\xff\xd8\xff", 1)
        + end_of_archive()
    )
    want = _tarfile_files(data)
    assert [n for n, _, _ in want] == ["k1.jpg", "k1.cls"]
    assert [(m.name, m.data_offset, m.size) for m in scan_buffer(data, "t.tar")] == want
    got = [(m.name, p) for m, p in iter_members(io.BytesIO(data), "t.tar", want=lambda n: True)]
    assert got == _webdataset_files(data)
