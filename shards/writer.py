"""Write one shard: its tar, its offset sidecar and its build report, each atomically.

A shard is complete when its report exists in ``OUT/.build/``: the writer renames the sidecar,
then the tar, then the report into place, each fsynced before its rename and its folder after,
so a build killed at any moment (power loss included) leaves either a finished shard or only
temporary files (``.*.tmp``), which the next run removes. ``--resume`` still re-checks a
finished shard against its report (``shard_matches_report``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shards._atomic import replace_durably, write_bytes_atomic, write_json_atomic
from shards.format import (
    BLOCK,
    INDEX_DTYPE,
    end_of_archive,
    index_name,
    make_key,
    padding,
    shard_name,
    tar_member_header,
)
from shards.scan import Candidate
from shards.validate import CheckedImage, ImageRejected, check_image, reencode

__all__ = [
    "ShardJob",
    "ShardWriteError",
    "WriteOptions",
    "report_path",
    "shard_matches_report",
    "write_shard",
]

BUILD_DIR = ".build"


@dataclass(frozen=True)
class WriteOptions:
    verify: str = "decode"
    resize_max_side: int | None = None
    quality: int = 90


@dataclass(frozen=True)
class ShardJob:
    """Shard ``index`` holds ``items``: (plan position, candidate) pairs in sample order.

    ``stamp`` is copied into the report: where the shard came from (plan hash, part).
    """

    index: int
    items: Sequence[tuple[int, Candidate]]
    total: int
    classes: Sequence[str]
    stamp: Mapping[str, str] = field(default_factory=dict)


def report_path(out: Path, index: int) -> Path:
    return out / BUILD_DIR / f"{shard_name(index)}.json"


class ShardWriteError(ValueError):
    """Writing a shard failed (a full disk, a permission error): the message is one line naming
    the path and the cause, and says how to go on."""


def write_shard(
    root: Path,
    out: Path,
    job: ShardJob,
    options: WriteOptions,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Read, check and write every item of ``job``; returns the report it saved.

    Items that fail their check (or cannot be read) are left out of the shard and listed in
    the report's ``skipped`` with the reason; the remaining samples keep their plan keys.
    ``progress(images, bytes)`` is called after each item. A failed write raises
    ``ShardWriteError`` and leaves no report, so ``--resume`` writes the shard again.
    """
    try:
        return _write_shard(root, out, job, options, progress)
    except OSError as exc:
        where = exc.filename if exc.filename is not None else out / shard_name(job.index)
        raise ShardWriteError(
            f"cannot write {os.fspath(where)}: {exc.strerror or exc}; free space or fix "
            "permissions, then run again with --resume"
        ) from None


def _write_shard(
    root: Path,
    out: Path,
    job: ShardJob,
    options: WriteOptions,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    name = shard_name(job.index)
    rows: list[tuple[int, int, int, int, int]] = []
    samples: list[list[Any]] = []
    skipped: list[dict[str, str]] = []
    digest = hashlib.sha256()
    fd, tmp_tar = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            offset = 0
            for position, cand in job.items:
                try:
                    data = (root / cand.rel).read_bytes()
                    image = _prepare(data, options)
                except OSError as exc:
                    skipped.append({"path": cand.rel, "reason": f"unreadable: {exc.strerror}"})
                    _tick(progress, 0)
                    continue
                except ImageRejected as exc:
                    skipped.append({"path": cand.rel, "reason": str(exc)})
                    _tick(progress, len(data))
                    continue
                key = make_key(position, job.total)
                sha = hashlib.sha256(data).hexdigest()
                meta = _metadata(cand, job.classes, image, sha, len(data))
                start = offset
                image_offset = offset + BLOCK
                for member, payload in (
                    (f"{key}.{image.format}", image.data),
                    (f"{key}.cls", str(cand.label).encode("ascii")),
                    (f"{key}.json", meta),
                ):
                    offset += _write_member(f, digest, member, payload)
                rows.append((start, offset, image_offset, len(image.data), cand.label))
                samples.append([key, cand.rel, cand.label, sha])
                _tick(progress, len(data))
            tail = end_of_archive()
            _write_all(f.fileno(), (tail,))
            digest.update(tail)
            filesize = offset + len(tail)
            os.fsync(f.fileno())
        index_bytes = _index_bytes(rows)
        idx_file = out / index_name(name)
        write_bytes_atomic(idx_file, index_bytes)
        replace_durably(tmp_tar, out / name)
    except BaseException:
        Path(tmp_tar).unlink(missing_ok=True)
        raise
    report = {
        "index": job.index,
        "url": name,
        "nsamples": len(rows),
        "filesize": filesize,
        "sha256": digest.hexdigest(),
        "index_url": idx_file.name,
        "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
        "samples": samples,
        "skipped": skipped,
        **job.stamp,
    }
    write_json_atomic(report_path(out, job.index), report)
    return report


def shard_matches_report(out: Path, index: int) -> bool:
    """Whether shard ``index`` in ``out`` is what its report says: the report, the sidecar and
    the tar exist, the tar has the reported size and ends with the two zero blocks. Cheap: a
    ``stat`` and one 1 KiB read, no hashing."""
    name = shard_name(index)
    try:
        report = json.loads(report_path(out, index).read_text(encoding="utf-8"))
        if not (out / index_name(name)).is_file():
            return False
        with open(out / name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != report["filesize"] or size < len(end_of_archive()):
                return False
            f.seek(size - len(end_of_archive()))
            return f.read() == end_of_archive()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _prepare(data: bytes, options: WriteOptions) -> CheckedImage:
    checked = check_image(data, options.verify)
    if options.resize_max_side is not None:
        return reencode(data, options.resize_max_side, options.quality)
    return checked


def _metadata(
    cand: Candidate, classes: Sequence[str], image: CheckedImage, sha: str, size: int
) -> bytes:
    info = image.info
    meta = {
        "path": cand.rel,
        "class": classes[cand.label],
        "label": cand.label,
        "format": image.format,
        "width": info.width if info else None,
        "height": info.height if info else None,
        "channels": info.channels if info else None,
        "sha256": sha,
        "source_bytes": size,
    }
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("ascii")


def _write_member(f: BinaryIO, digest: Any, name: str, payload: bytes) -> int:
    parts = (tar_member_header(name, len(payload)), payload, padding(len(payload)))
    for part in parts:
        digest.update(part)
    return _write_all(f.fileno(), parts)


def _write_all(fd: int, parts: Sequence[bytes]) -> int:
    """``os.writev`` until every byte is written (short writes are retried)."""
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    if done < total:
        rest = b"".join(parts)[done:]
        while rest:
            rest = rest[os.write(fd, rest) :]
    return total


def _index_bytes(rows: list[tuple[int, int, int, int, int]]) -> bytes:
    arr = np.array(rows, dtype=INDEX_DTYPE) if rows else np.zeros(0, dtype=INDEX_DTYPE)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _tick(progress: Callable[[int, int], None] | None, nbytes: int) -> None:
    if progress is not None:
        progress(1, nbytes)
