"""Turn what the user names (manifest, shard list, brace pattern) into the shards to read.

Accepted inputs:

- a manifest: a ``manifest.json`` path, a directory holding one, or a URL ending in ``.json``
  (or ``/``, meaning ``.../manifest.json``); its shard URLs are resolved against its location;
- shard URLs or paths, as a list, a single ``.tar`` location, or a brace pattern such as
  ``data/shard-{000000..000007}.tar`` (each list item may be a pattern too). Each shard's
  sample count comes from the ``.idx.npy`` sidecar beside it when there is one, else from a
  header scan, so shards written by other tools (webdataset's ``ShardWriter``) work; they have
  no class names. ``first_index`` is assigned cumulatively in the given order. A string that
  names an existing local file or folder is taken literally, never brace-expanded (a resolved
  path may contain ``{``).

Local locations become absolute paths; URLs (``file://``, ``http(s)://``, any fsspec scheme)
are kept as given.

A remote shard of a list gets a ``validator``: what its server said about it when the source
was resolved (ETag, Last-Modified, size; one request per shard, made anyway for its size), or,
from a server that says neither, a token of this resolution. A sidecar read here gets
``index_sha256`` of the bytes read. (A manifest entry without sha256 is asked for its validator
when a reader caches it: ``RemoteOptions.cached``.) The cache trusts
a copy only under these, and the reader refuses a shard whose validator changed since
(docs/architecture.md, "Remote reads").
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import braceexpand

from loader._scanio import scan_location
from loader.remote.files import RemoteFile
from loader.remote.location import is_local, is_url, join, local_path, parent, sidecar_url
from loader.remote.redact import redact
from loader.remote.retry import RetryPolicy
from shards.format import (
    MANIFEST_NAME,
    MIN_SAMPLE_BYTES,
    check_index_rows,
    read_index,
    read_index_rows,
)
from shards.manifest import Manifest, ManifestError, repeated_shard
from shards.tarscan import ShardFormatError

__all__ = ["DatasetSource", "ShardSource", "resolve_source"]

log = logging.getLogger(__name__)
_CLAIM_TO_DO = (
    "the shard is truncated or was replaced, or the manifest is wrong: check the folder with "
    "'shardfeed verify' and rebuild"
)


@dataclass(frozen=True)
class ShardSource:
    """One shard: where it is, how many samples it holds and the global id of its first.
    ``validator``: see the module docstring (``None`` for local shards and known sha256s)."""

    url: str
    nsamples: int
    first_index: int
    index_url: str | None
    sha256: str | None
    filesize: int | None
    index_sha256: str | None = None
    validator: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """The shards of a dataset in global-id order; ``classes`` is empty for foreign shards."""

    shards: tuple[ShardSource, ...]
    classes: tuple[str, ...]
    num_samples: int
    origin: str

    def shard_of(self, gid: int) -> int:
        """The index in ``shards`` of the shard that holds global id ``gid``."""
        firsts = [s.first_index for s in self.shards]
        return bisect.bisect_right(firsts, gid) - 1


def resolve_source(
    source: str | os.PathLike[str] | Sequence[str], *, retry: RetryPolicy | None = None
) -> DatasetSource:
    """Resolve a manifest, shard list or brace pattern (see the module docstring). Remote
    requests are retried by ``retry`` (default ``RetryPolicy()``).

    Raises ``FileNotFoundError`` naming a missing local manifest or shard (or any missing
    shard of a list), ``ManifestError`` for a malformed manifest (one that lists a shard twice,
    or claims more samples for a shard than it can hold: see ``_bound_claims``),
    ``ShardFormatError`` for a listed shard whose tar is corrupt, and ``ValueError`` for an
    empty or repeated list.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        if not source:
            raise ValueError("expected a manifest, shard list or brace pattern, got ''")
        literal = "{" not in source or (is_local(source) and os.path.exists(local_path(source)))
        if literal and _is_manifest(source):
            return _from_manifest(source, retry)
        shards = [source] if literal else list(braceexpand.braceexpand(source))
        return _from_shards(shards, source, retry)
    if isinstance(source, bytes) or not isinstance(source, Sequence):
        raise ValueError(
            "expected a manifest path or URL, a brace pattern or a list of shard URLs, "
            f"got {type(source).__name__}"
        )
    urls: list[str] = []
    for item in source:
        if not isinstance(item, str | os.PathLike):
            raise ValueError(f"expected shard URLs or paths, got an item {item!r}")
        urls.extend(braceexpand.braceexpand(os.fspath(item)))
    origin = repr(list(source)) if len(source) < 4 else f"{len(source)} shards"
    return _from_shards(urls, origin, retry)


def _is_manifest(location: str) -> bool:
    if location.endswith((".json", "/")):
        return True
    if is_url(location) and not location.startswith("file://"):
        return False
    path = local_path(location)
    if os.path.isdir(path):
        return True
    if location.endswith(".tar") or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(512).lstrip().startswith(b"{")


def _from_manifest(location: str, retry: RetryPolicy | None) -> DatasetSource:
    if is_local(location):
        path = local_path(location)
        if os.path.isdir(path):
            path = os.path.join(path, MANIFEST_NAME)
        manifest = Manifest.load(path)
        base, source = os.path.dirname(path), path
    else:
        if location.endswith("/"):
            location += MANIFEST_NAME
        manifest = _load_remote_manifest(location, retry)
        base, source = parent(location), location
    shards = []
    for entry in manifest.shards:
        url = join(base, entry.url)
        if is_local(url) and not os.path.isfile(local_path(url)):
            raise FileNotFoundError(
                f"shard {redact(url)} listed in manifest {redact(source)} not found; rebuild "
                "with 'shardfeed shard' or fix the manifest"
            )
        shards.append(
            ShardSource(
                url=url,
                nsamples=entry.nsamples,
                first_index=entry.first_index,
                index_url=join(base, entry.index_url) if entry.index_url else None,
                sha256=entry.sha256 or None,
                filesize=entry.filesize if entry.filesize >= 0 else None,
                index_sha256=entry.index_sha256 or None,
            )
        )
    repeated = repeated_shard((_same_file(s.url), s.sha256 or "") for s in shards)
    if repeated is not None:
        raise ManifestError(
            f"{source}: expected each shard once, got {repeated} twice (two entries name the "
            "same file): its samples would be delivered twice; remove the repeat"
        )
    _bound_claims(shards, source, retry)
    return DatasetSource(tuple(shards), tuple(manifest.classes), manifest.num_samples, location)


def _same_file(url: str) -> str:
    return os.path.realpath(local_path(url)) if is_local(url) else url


def _bound_claims(
    shards: Sequence[ShardSource], source: str, retry: RetryPolicy | None = None
) -> None:
    """Refuse, before any plan is sized by them, sample counts no shard could hold: a shard of
    ``n`` bytes holds at most ``n // MIN_SAMPLE_BYTES`` samples, and no more than its local
    sidecar index's row count (read from the ``.npy`` header alone). The size is the local
    file's; for a remote shard the manifest's ``filesize`` (the reader refuses a file of
    another size when it opens it), else one HEAD request. Raises ``ManifestError`` naming the
    shard, the claim and the bound; costs a ``stat`` and one small read per local shard."""
    for shard in shards:
        size = _shard_size(shard, retry)
        if size is not None and shard.nsamples > size // MIN_SAMPLE_BYTES:
            raise ManifestError(
                f"{source}: expected at most {size // MIN_SAMPLE_BYTES} samples in shard "
                f"{shard.url} ({size} bytes, at least {MIN_SAMPLE_BYTES} per sample), got "
                f"nsamples={shard.nsamples}; {_CLAIM_TO_DO}"
            )
        rows = _index_rows(shard.index_url)
        if rows is not None and shard.nsamples > rows:
            raise ManifestError(
                f"{source}: expected at most {rows} samples in shard {shard.url} (rows of its "
                f"index {shard.index_url}), got nsamples={shard.nsamples}; {_CLAIM_TO_DO}"
            )


def _shard_size(shard: ShardSource, retry: RetryPolicy | None) -> int | None:
    if is_local(shard.url):
        return os.path.getsize(local_path(shard.url))
    if shard.filesize is not None:
        return shard.filesize
    try:
        return RemoteFile(shard.url, retry=retry).size()
    except FileNotFoundError:
        raise FileNotFoundError(f"shard {shard.url} not found") from None


def _index_rows(index_url: str | None) -> int | None:
    """Rows a local sidecar declares; ``None`` for none, a remote one or one the reader will
    refuse (it names the damage when it opens the shard)."""
    if index_url is None or not is_local(index_url):
        return None
    try:
        with open(local_path(index_url), "rb") as f:
            return read_index_rows(f, os.fstat(f.fileno()).st_size)
    except (OSError, ValueError):
        return None


def _load_remote_manifest(url: str, retry: RetryPolicy | None) -> Manifest:
    try:
        raw = RemoteFile(url, retry=retry).read_all()
    except FileNotFoundError:
        raise FileNotFoundError(f"no manifest at {redact(url)}") from None
    return Manifest.from_json(raw, source=redact(url))


def _from_shards(urls: list[str], origin: str, retry: RetryPolicy | None) -> DatasetSource:
    if not urls:
        raise ValueError("expected at least one shard, got an empty list")
    urls = [u if is_url(u) else local_path(u) for u in urls]
    seen: set[str] = set()
    for u in urls:
        if u in seen:
            raise ValueError(f"expected each shard once, got {redact(u)} twice")
        seen.add(u)
    shards: list[ShardSource] = []
    first = 0
    token = _run_token()
    for url in urls:
        shard = _describe_shard(url, first, retry, token)
        shards.append(shard)
        first += shard.nsamples
    return DatasetSource(tuple(shards), (), first, origin)


def _run_token() -> str:
    """The validator of shards whose server gives none: new for every resolution, so their
    cached copies serve one run (its ranks' workers and epochs) and no later one."""
    return f"run:{uuid.uuid4().hex}"


def _validator(remote: RemoteFile, token: str) -> tuple[str, int | None]:
    """``remote``'s validator, or ``token`` with its size when it has none, and its size (one
    request)."""
    size = remote.size()
    return remote.validator or f"{token};size={size}", size


def _describe_shard(url: str, first: int, retry: RetryPolicy | None, token: str) -> ShardSource:
    sidecar = sidecar_url(url)
    validator = None
    try:
        if is_local(url):
            filesize: int | None = os.path.getsize(local_path(url))
        else:
            validator, filesize = _validator(RemoteFile(url, retry=retry), token)
    except FileNotFoundError:
        raise FileNotFoundError(f"shard {redact(url)} not found") from None
    rows = _sidecar_rows(sidecar, url, filesize, retry)
    try:
        nsamples = len(scan_location(url, retry).index) if rows is None else rows[0]
    except ShardFormatError as exc:
        raise ShardFormatError(redact(exc)) from None
    log.debug(
        "shard %s: %d samples (%s)", redact(url), nsamples, "scan" if rows is None else "sidecar"
    )
    return ShardSource(
        url,
        nsamples,
        first,
        None if rows is None else sidecar,
        None,
        filesize,
        index_sha256=None if rows is None else rows[1],
        validator=validator,
    )


def _sidecar_rows(
    sidecar: str, url: str, filesize: int | None, retry: RetryPolicy | None
) -> tuple[int, str] | None:
    """Row count and sha256 of the sidecar index at ``sidecar``, or ``None`` when there is
    none; its rows are checked against the shard's ``filesize`` (``check_index_rows``) when it
    is known."""
    try:
        if is_local(sidecar):
            if not os.path.isfile(local_path(sidecar)):
                return None
            with open(local_path(sidecar), "rb") as f:
                raw = f.read()
        else:
            remote = RemoteFile(sidecar, retry=retry)
            if not remote.exists():
                return None
            raw = remote.read_all()
        index = read_index(raw)
        if filesize is not None:
            check_index_rows(index, filesize, redact(url), f"sidecar {redact(sidecar)}")
        return len(index), hashlib.sha256(raw).hexdigest()
    except (ValueError, EOFError) as exc:
        raise ValueError(f"unreadable sidecar index {redact(sidecar)}: {exc}; rebuild it") from exc
