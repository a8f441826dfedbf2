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
    """The absolute file-system path of a local location (``file://`` URLs are decoded)."""
    if location.startswith("file://"):
        return unquote(urlsplit(location).path)
    return os.path.abspath(location)


def parent(location: str) -> str:
    """The directory part of a location, ending without a slash."""
    if not is_url(location):
        return os.path.dirname(os.path.abspath(location))
    return location.rsplit("/", 1)[0]


def join(base: str, relative: str) -> str:
    """``relative`` resolved against the directory ``base``; absolute inputs come back as is.

    ``..`` and ``.`` segments are folded for URLs as for paths.
    """
    if is_url(relative) or os.path.isabs(relative):
        return relative
    if not is_url(base):
        return os.path.normpath(os.path.join(base, relative))
    scheme, rest = base.split("://", 1)
    authority, _, path = rest.partition("/")
    joined = posixpath.normpath(posixpath.join("/" + path, relative))
    return f"{scheme}://{authority}{joined}"


def sidecar_url(shard: str) -> str:
    """The sidecar index expected beside a shard (``x.tar`` -> ``x.idx.npy``)."""
    head, sep, name = shard.rpartition("/")
    return f"{head}{sep}{index_name(name)}"
