"""Hostile tar headers: sizes that point backwards must be refused, never looped over."""

from __future__ import annotations

import io
from itertools import islice

import pytest

from shards.format import end_of_archive, padding, tar_member_header
from shards.tarscan import ShardFormatError, iter_members, scan_buffer


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
