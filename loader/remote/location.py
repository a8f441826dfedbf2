"""Where a shard lives: local path or fsspec URL, and the names beside it (pure string work)."""

from __future__ import annotations

import os
import posixpath
import re
from urllib.parse import unquote, urlsplit

from shards.format import index_name

__all__ = ["is_local", "is_url", "join", "local_path", "parent", "sidecar_url"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(location: str) -> bool:
    """True for ``scheme://...`` strings (``file://`` included)."""
    return _SCHEME.match(location) is not None


def is_local(location: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return not is_url(location) or location.startswith("file://")


def local_path(location: str) -> str:
    """The file-system path a local location opens (``file://`` URLs are decoded).

    Every symlink is followed and each ``..`` is applied after the symlinks before it, as the
    kernel does (``os.path.realpath``); folding ``..`` lexically first would name another file
    when a symlink precedes it. The service confines paths with this same function
    (docs/architecture.md, section "Service"), so what it checks is what the loader opens.
    """
    if location.startswith("file://"):
        return os.path.realpath(unquote(urlsplit(location).path))
    return os.path.realpath(location)


def parent(location: str) -> str:
    """The directory part of a location, ending without a slash."""
    if not is_url(location):
        return os.path.dirname(os.path.abspath(location))
    return location.rsplit("/", 1)[0]


def join(base: str, relative: str) -> str:
    """``relative`` resolved against the directory ``base``; absolute inputs come back as is.

    For local paths the result is ``local_path`` of the joined path (symlinks followed before
    ``..`` is applied); for URLs ``..`` and ``.`` are folded lexically (a URL has no symlinks).
    """
    if is_url(relative) or os.path.isabs(relative):
        return relative
    if not is_url(base):
        return local_path(os.path.join(base, relative))
    scheme, rest = base.split("://", 1)
    authority, _, path = rest.partition("/")
    joined = posixpath.normpath(posixpath.join("/" + path, relative))
    return f"{scheme}://{authority}{joined}"


def sidecar_url(shard: str) -> str:
    """The sidecar index expected beside a shard (``x.tar`` -> ``x.idx.npy``)."""
    head, sep, name = shard.rpartition("/")
    return f"{head}{sep}{index_name(name)}"
