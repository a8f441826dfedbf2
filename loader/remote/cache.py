"""A node-local cache of remote shards and index files, shared by every worker and rank.

``ShardCache(directory, limit=BYTES)`` keeps whole remote files on local disk under names
derived from their URLs. ``open()`` hands back a ``CachedFile`` (a local path) once the file
is complete and checked; local sources never come here (they are read in place).

Promises (docs/architecture.md, section "Remote reads"):

- One download per file however many processes ask: a per-file fill lock (``fcntl.flock``,
  released by the kernel when a process dies) serialises fillers, and whoever takes it second
  finds the file there.
- A file is trusted only when complete and checked: it is downloaded to ``NAME.SIZE.PID.part``,
  fsynced, checked against the manifest's size and sha256, and renamed to ``NAME``; a marker
  ``NAME.ok`` records its size, inode, mtime, sha256 and ``validator``. A file whose stat no
  longer matches its marker (rewritten, truncated, left by a killed run) is hashed again, and
  fetched again when it does not match (or when there is no checksum to compare with). A
  killed fill leaves only a ``.part`` file, which nothing reads and the next fill of that file
  deletes.
- Without a sha256 a file is trusted only under the ``validator`` its reader names: the
  server's ETag / Last-Modified / size seen when the dataset was resolved (one request per
  shard per run), or a token of that run when the server gives neither. A shard rebuilt on the
  server at the same URL is therefore fetched again, and an index is cached under its own
  sha256 or else its shard's validator, as one unit with the shard. ``verify`` (the reader's
  check of the server's validator) runs after a download, before the rename.
- Eviction: before a fill, least recently opened files are deleted until the new one fits
  within ``limit``. A file a reader has open (``CachedFile`` holds a shared lock on
  ``NAME.use``) is never evicted, and only files with a marker (ones this cache downloaded)
  are ever deleted, so the cache exceeds ``limit`` only by files in use. An evicted entry
  leaves nothing behind: its ``.ok``, ``.lock`` and ``.use`` files go with it (a lock file is
  unlinked only while held, and whoever locks a file checks that it is still the one at its
  path, so no two processes ever hold "the" lock on two different inodes). A loader with a
  ``cache_limit`` keeps at most two shards open per process (the one it reads and the one it
  reads ahead), so a limit below that many shards is exceeded by up to one shard per process.

Not thread-safe per ``CachedFile``; ``ShardCache`` itself holds no open state and pickles.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loader.remote._locks import Lock, locked
from loader.remote.errors import CacheError, RemoteReadError
from loader.remote.files import CHUNK_BYTES
from loader.remote.redact import redact

if TYPE_CHECKING:
    from loader.remote.files import RemoteFile
    from loader.remote.netstats import NetCounters

__all__ = ["CacheError", "CachedFile", "ShardCache"]

log = logging.getLogger(__name__)

_PART = re.compile(r"^(?P<name>.+)\.(?P<size>\d+)\.(?P<pid>\d+)\.part$")


class CachedFile:
    """A complete, checked file in the cache, kept from eviction until ``close()``;
    ``validator``: the one it was trusted under."""

    def __init__(self, path: str, use_fd: int, validator: str | None = None) -> None:
        self.path = path
        self.validator = validator
        self._fd: int | None = use_fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CachedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


@dataclass(frozen=True)
class ShardCache:
    """The cache in ``directory``; ``limit``: the most bytes of files it keeps (``None``: no
    limit). ``lock_timeout_s``: how long to wait for another process's fill or eviction."""

    directory: str
    limit: int | None = None
    lock_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not isinstance(self.directory, str) or not self.directory:
            raise ValueError(f"expected a cache directory, got cache_dir={self.directory!r}")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit <= 0
        ):
            raise ValueError(f"expected cache_limit > 0 bytes or None, got {self.limit!r}")
        os.makedirs(self.directory, exist_ok=True)

    def name(self, url: str) -> str:
        """The cache's file name for ``url``: a hash of the URL, then its base name."""
        base = re.sub(r"[^A-Za-z0-9._-]", "_", url.rsplit("/", 1)[-1])[-80:] or "file"
        return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{base}"

    def _path(self, name: str, suffix: str = "") -> str:
        return os.path.join(self.directory, name + suffix)

    def open(
        self,
        remote: RemoteFile,
        *,
        size: int | None = None,
        sha256: str | None = None,
        validator: str | None = None,
        verify: Callable[[RemoteFile], None] | None = None,
        counters: NetCounters | None = None,
    ) -> CachedFile:
        """The cached copy of ``remote`` (downloaded first if missing or failing its check).

        ``size``/``sha256`` are what the manifest says (``None``: unknown); ``validator`` what
        the copy must have been downloaded under (see the module docstring); ``verify`` is
        called with ``remote`` after a download, before the copy is trusted. Raises
        ``RemoteReadError`` when the download fails or does not match them, ``CacheError``
        when another process's fill does not finish within ``lock_timeout_s``.
        """
        name = self.name(remote.url)
        want = _Want(size, sha256, validator)
        use = locked(self._path(name, ".use"), fcntl.LOCK_SH)
        assert use is not None  # a blocking lock is always taken
        try:
            if self._trusted(name, want):
                _count(counters, "cache_hits")
            else:
                with Lock(self._path(name, ".lock"), self.lock_timeout_s, remote.url):
                    if self._trusted(name, want) or self._recheck(name, want):
                        _count(counters, "cache_hits")
                    else:
                        self._fill(name, remote, want, verify, counters)
                        _count(counters, "cache_fills")
            os.utime(self._path(name, ".ok"))
            return CachedFile(self._path(name), use, want.validator)
        except BaseException:
            os.close(use)
            raise

    def _marker(self, name: str) -> dict[str, object] | None:
        try:
            with open(self._path(name, ".ok"), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _trusted(self, name: str, want: _Want) -> bool:
        marker = self._marker(name)
        try:
            st = os.stat(self._path(name))
        except FileNotFoundError:
            return False
        if marker is None:
            return False
        same = (st.st_size, st.st_ino, st.st_mtime_ns) == (
            marker.get("size"), marker.get("ino"), marker.get("mtime_ns"),
        )  # fmt: skip
        return (
            same
            and (want.size is None or st.st_size == want.size)
            and (want.sha256 is None or marker.get("sha256") == want.sha256)
            and (want.validator is None or marker.get("validator") == want.validator)
        )

    def _recheck(self, name: str, want: _Want) -> bool:
        """Under the fill lock: a file whose marker does not match is hashed again (only a
        sha256 can vouch for it)."""
        path = self._path(name)
        if want.sha256 is None or not os.path.exists(path):
            return False
        digest, length = _hash_file(path)
        if digest != want.sha256 or (want.size is not None and length != want.size):
            log.warning("cached %s does not match its checksum; fetching it again", path)
            return False
        self._write_marker(name, path, digest, url=None, validator=want.validator)
        return True

    def _fill(
        self,
        name: str,
        remote: RemoteFile,
        want: _Want,
        verify: Callable[[RemoteFile], None] | None,
        counters: NetCounters | None,
    ) -> None:
        size, sha256 = want.size, want.sha256
        self._drop_parts(name)
        whole = None
        if size is None:  # a small file (an index) of no stated size: one whole-file GET
            whole = remote.read_all()
            size = len(whole)
        self._make_room(size, name, counters)
        part = self._path(name, f".{size}.{os.getpid()}.part")
        digest = hashlib.sha256()
        try:
            with open(part, "wb") as f:
                for lo in range(0, size, CHUNK_BYTES):
                    hi = min(size, lo + CHUNK_BYTES)
                    data = whole[lo:hi] if whole is not None else remote.fetch(lo, hi)
                    if len(data) != hi - lo:
                        raise _mismatch(remote.url, f"ends at byte {lo + len(data)}", size)
                    digest.update(data)
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if sha256 is not None and digest.hexdigest() != sha256:
                raise _mismatch(remote.url, f"has sha256 {digest.hexdigest()}", sha256)
            if verify is not None:
                verify(remote)
            self._write_marker(
                name, part, digest.hexdigest(), url=remote.url, validator=want.validator
            )
            os.replace(part, self._path(name))
            _fsync_dir(self.directory)
        except BaseException:
            _unlink(part)
            raise

    def _write_marker(
        self, name: str, data_path: str, digest: str, *, url: str | None, validator: str | None
    ) -> None:
        st = os.stat(data_path)
        doc: dict[str, object] = {
            "size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns, "sha256": digest,
            "validator": validator,
        }  # fmt: skip
        tmp = self._path(name, f".ok.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc | ({"url": redact(url)} if url else {}), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(name, ".ok"))

    def _drop_parts(self, name: str) -> None:
        """Under ``name``'s fill lock: any ``.part`` of it is left by a killed fill."""
        for entry in os.listdir(self.directory):
            match = _PART.match(entry)
            if match and match["name"] == name:
                _unlink(os.path.join(self.directory, entry))

    def _make_room(self, incoming: int, keep: str, counters: NetCounters | None) -> None:
        if self.limit is None:
            return
        with Lock(self._path(".evict", ".lock"), self.lock_timeout_s, self.directory):
            used, candidates = 0, []
            for entry in os.listdir(self.directory):
                part = _PART.match(entry)
                if part and part["name"] != keep:
                    used += int(part["size"])
                if not entry.endswith(".ok"):
                    continue
                name = entry[: -len(".ok")]
                try:
                    st, mark = os.stat(self._path(name)), os.stat(self._path(entry))
                except FileNotFoundError:
                    continue
                used += st.st_size
                if name != keep:
                    candidates.append((mark.st_mtime_ns, name, st.st_size))
            for _, name, nbytes in sorted(candidates):
                if used + incoming <= self.limit:
                    break
                if self._evict(name):
                    used -= nbytes
                    _count(counters, "cache_evictions")
            if used + incoming > self.limit:
                log.info(
                    "cache %s holds %d bytes in use; %d more exceed cache_limit=%d",
                    self.directory, used, incoming, self.limit,
                )  # fmt: skip

    def _evict(self, name: str) -> bool:
        """Delete ``name`` with its marker, fill lock and use lock, unless a reader has it open
        or a process is filling it (both locks held, non-blocking, while unlinking)."""
        held: list[int] = []
        try:
            for suffix in (".use", ".lock"):
                fd = locked(self._path(name, suffix), fcntl.LOCK_EX | fcntl.LOCK_NB)
                if fd is None:
                    return False
                held.append(fd)
            for suffix in (".ok", "", ".lock", ".use"):
                _unlink(self._path(name, suffix))
            return True
        finally:
            for fd in held:
                os.close(fd)

    def used_bytes(self) -> int:
        """Bytes of complete files (with a marker) in the cache now."""
        total = 0
        for entry in os.listdir(self.directory):
            if entry.endswith(".ok"):
                try:
                    total += os.stat(self._path(entry[: -len(".ok")])).st_size
                except FileNotFoundError:
                    pass
        return total


@dataclass(frozen=True)
class _Want:
    """What a cached copy must match: size, sha256 and validator (``None``: any)."""

    size: int | None
    sha256: str | None
    validator: str | None


def _mismatch(url: str, got: str, expected: object) -> RemoteReadError:
    return RemoteReadError(
        f"{url}: downloaded copy {got}, the manifest says {expected}: the file changed or the "
        "manifest is stale; rebuild the manifest (not retried)",
        url=url,
        cause="size or checksum mismatch",
    )


def _hash_file(path: str) -> tuple[str, int]:
    digest, length = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            length += len(chunk)
    return digest.hexdigest(), length


def _count(counters: NetCounters | None, field: str) -> None:
    if counters is not None:
        counters.add(field)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
