"""Confinement of benchmark inputs to the configured data roots.

A path is accepted only when its fully resolved form (every symlink followed) lies under one
of the roots; relative paths are taken relative to the first root. A shard folder's manifest
is read too, and every shard and sidecar (``url`` and ``index_url``) it lists must resolve under
a root as well, so a manifest cannot smuggle in ``../../etc/passwd`` or a URL. Paths are
resolved with the loader's own ``local_path``/``join`` (symlinks followed before ``..``), so the
file checked here is the file the loader opens. Refusals never say where a symlink points.
Missing inputs are reported only after the confinement check, so the service never tells
whether a path outside the roots exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loader.remote.location import join, local_path
from shards.format import MANIFEST_NAME
from shards.scan import scan_folder

__all__ = ["MissingInput", "PathRefused", "check_bench_inputs", "resolve_under_roots"]

_MAX_MANIFEST_BYTES = 256 << 20


class PathRefused(PermissionError):
    """An input path outside the data roots; ``field`` names the request field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class MissingInput(FileNotFoundError):
    """An input under the roots that does not exist or is not what the field needs."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _is_under(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolve_under_roots(value: str, roots: Sequence[Path], field: str) -> Path:
    """``value`` resolved, or PathRefused saying why it is not under any of ``roots``.

    ``roots`` must already be resolved. Raises ValueError for a string that is no path at
    all (a NUL byte).
    """
    if "\x00" in value:
        raise ValueError(f"expected a path without NUL bytes, got {field}={value!r}")
    if not roots:
        raise PathRefused(
            field, "no data roots are configured; start the service with --data-root DIR"
        )
    if "://" in value or value.startswith("file:"):
        raise PathRefused(
            field, f"{value!r} is a URL; only local paths under the data roots are read"
        )
    raw = Path(value)
    joined = raw if raw.is_absolute() else roots[0] / raw
    resolved = Path(local_path(str(joined)))
    if any(_is_under(resolved, root) for root in roots):
        return resolved
    lexical = Path(os.path.normpath(joined))
    shown = ", ".join(str(r) for r in roots)
    if ".." in raw.parts and not any(_is_under(lexical, root) for root in roots):
        reason = f"{value!r} climbs out of the data roots with '..' (roots: {shown})"
    elif any(_is_under(lexical, root) for root in roots):
        reason = (
            f"{value!r} goes through a symlink that points outside the data roots (roots: {shown})"
        )
    else:
        reason = f"{value!r} is outside the data roots (roots: {shown})"
    raise PathRefused(field, reason)


def _manifest_of(shards: Path) -> Path:
    manifest = shards / MANIFEST_NAME if shards.is_dir() else shards
    if not manifest.is_file():
        raise MissingInput(
            "shards", f"expected a shard folder with manifest.json, got {str(shards)!r}"
        )
    return manifest


def _check_manifest(manifest: Path, roots: Sequence[Path]) -> None:
    try:
        if manifest.stat().st_size > _MAX_MANIFEST_BYTES:
            raise MissingInput("shards", f"manifest {str(manifest)!r} is larger than 256 MB")
        doc: Any = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        if isinstance(exc, MissingInput):
            raise
        raise MissingInput("shards", f"manifest {str(manifest)!r} is not JSON: {exc}") from exc
    shardlist = doc.get("shardlist") if isinstance(doc, dict) else None
    if not isinstance(shardlist, list):
        raise MissingInput("shards", f"manifest {str(manifest)!r} has no shardlist")
    for entry in shardlist:
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str):
            raise MissingInput("shards", f"manifest {str(manifest)!r} lists a shard without url")
        _check_listed(manifest, "url", url, roots)
        index_url = entry.get("index_url")
        if index_url is not None:
            if not isinstance(index_url, str):
                raise MissingInput(
                    "shards", f"manifest {str(manifest)!r} lists a non-text index_url"
                )
            _check_listed(manifest, "index_url", index_url, roots)


def _check_listed(manifest: Path, key: str, value: str, roots: Sequence[Path]) -> None:
    """Refuse a manifest entry's ``key`` unless the file the loader would open for it (its
    ``join``: symlinks followed before ``..``) lies under a root. The message names the entry
    as written, never the resolved target."""
    what = "shard" if key == "url" else key
    if "://" in value or value.startswith("file:"):
        raise PathRefused(
            "shards",
            f"manifest {str(manifest)!r} lists {what} {value!r}, which is a URL; only local "
            "paths under the data roots are read",
        )
    try:
        resolve_under_roots(join(str(manifest.parent), value), roots, "shards")
    except PathRefused:
        shown = ", ".join(str(r) for r in roots)
        raise PathRefused(
            "shards",
            f"manifest {str(manifest)!r} lists {what} {value!r}, which is outside the data "
            f"roots (roots: {shown})",
        ) from None


def _check_folder_files(folder: Path, roots: Sequence[Path]) -> None:
    """Refuse an image folder any of whose images (as map mode lists them: ``scan_folder``,
    symlinked files and class folders followed) resolves outside the roots. Walks the whole
    folder, as the run's map mode will; the message names the file, not where it points."""
    try:
        scan = scan_folder(folder)
    except (OSError, ValueError):
        return  # no images to read: map mode reports the folder itself
    for candidate in scan.candidates:
        target = Path(local_path(str(folder / candidate.rel)))
        if not any(_is_under(target, root) for root in roots):
            raise PathRefused(
                "folder",
                f"{candidate.rel!r} in {str(folder)!r} links outside the data roots "
                f"(roots: {', '.join(str(r) for r in roots)})",
            )


def check_bench_inputs(
    folder: str | None, shards: str, roots: Sequence[Path]
) -> tuple[str | None, str]:
    """The resolved ``(folder, shards)`` of a benchmark request, checked against ``roots``.

    Raises PathRefused (-> 403) for anything outside the roots (an image in ``folder`` that
    links outside them included), MissingInput (-> 422) for a folder that is not an image
    folder or shards without a readable manifest.
    """
    resolved_folder = None
    if folder is not None:
        path = resolve_under_roots(folder, roots, "folder")
        if not path.is_dir():
            raise MissingInput("folder", f"expected an image folder, got {str(path)!r}")
        _check_folder_files(path, roots)
        resolved_folder = str(path)
    shards_path = resolve_under_roots(shards, roots, "shards")
    _check_manifest(_manifest_of(shards_path), roots)
    return resolved_folder, str(shards_path)
