"""``shardfeed verify`` and ``shardfeed inspect``: check a build against its manifest, summarise it.

``verify_build`` re-hashes every shard and sidecar, walks each tar's headers, and checks that
sample counts, keys and sidecar offsets agree with the manifest. It returns one line per
problem; an empty list means every check held.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from shards.format import check_index_rows, read_index
from shards.manifest import Manifest

__all__ = ["inspect_build", "verify_build"]


def verify_build(out: str | Path) -> list[str]:
    """Check every shard of the build in ``out``; returns the problems found, one line each."""
    base = Path(out)
    manifest = Manifest.load(base)
    problems: list[str] = []
    for entry in manifest.shards:
        path = base / entry.url
        if not path.is_file():
            problems.append(f"{entry.url}: missing")
            continue
        size = path.stat().st_size
        if entry.filesize >= 0 and size != entry.filesize:
            problems.append(f"{entry.url}: size {size} bytes, manifest says {entry.filesize}")
        with open(path, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        if entry.sha256 and sha != entry.sha256:
            problems.append(f"{entry.url}: sha256 {sha[:16]}… does not match the manifest")
        keys, offsets, structure = _walk_tar(path)
        if structure:
            problems.append(f"{entry.url}: {structure}")
            continue
        if len(keys) != entry.nsamples:
            problems.append(f"{entry.url}: {len(keys)} samples, manifest says {entry.nsamples}")
        if entry.index_url:
            problems.extend(
                _check_index(base, entry.url, entry.index_url, entry.index_sha256, offsets, size)
            )
    return problems


def _walk_tar(path: Path) -> tuple[list[str], list[int], str | None]:
    keys: list[str] = []
    offsets: list[int] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    return keys, offsets, f"member {member.name!r} is not a regular file"
                key = member.name.split(".", 1)[0]
                if not keys or keys[-1] != key:
                    keys.append(key)
                    offsets.append(member.offset)
    except (tarfile.TarError, OSError) as exc:
        return keys, offsets, f"broken tar structure after {len(keys)} samples ({exc})"
    if len(set(keys)) != len(keys):
        return keys, offsets, "a key occurs in two places: members of a sample are not adjacent"
    return keys, offsets, None


def _check_index(
    base: Path, url: str, index_url: str, index_sha: str | None, offsets: list[int], size: int
) -> list[str]:
    path = base / index_url
    if not path.is_file():
        return [f"{index_url}: sidecar index of {url} missing"]
    data = path.read_bytes()
    if index_sha and hashlib.sha256(data).hexdigest() != index_sha:
        return [f"{index_url}: sha256 does not match the manifest"]
    try:
        rows = read_index(data)
        check_index_rows(rows, size, url, f"sidecar {index_url}")
    except ValueError as exc:
        return [f"{index_url}: {exc}"]
    if rows["offset"].tolist() != offsets:
        return [f"{index_url}: sample offsets disagree with the headers of {url}"]
    return []


def inspect_build(out: str | Path) -> dict[str, Any]:
    """The build at a glance: shards, samples, classes, bytes, skipped and duplicates, the
    samples of each class by name (``class_counts``, in label order) and what labelling left
    out (``labels``: None for a build without ``--labels`` or ``--classes-from``)."""
    base = Path(out)
    manifest = Manifest.load(base)
    sizes = [s.nsamples for s in manifest.shards]
    dup = manifest.duplicates
    against = dup.get("against")
    return {
        "path": str(base),
        "shards": len(manifest.shards),
        "samples": manifest.num_samples,
        "samples_per_shard": {"min": min(sizes), "max": max(sizes)},
        "classes": len(manifest.classes),
        "empty_classes": manifest.empty_classes,
        "bytes": sum(s.filesize for s in manifest.shards),
        "skipped": len(manifest.skipped),
        "skipped_by_reason": manifest.skipped_by_reason(),
        "duplicate_groups": dup.get("exact_groups", 0),
        "duplicate_extra_copies": dup.get("extra_copies", 0),
        "conflicting_label_groups": dup.get("conflicting_label_groups", 0),
        "against_matches": against.get("matches") if isinstance(against, dict) else None,
        "labels": manifest.labels or None,
        "class_counts": dict(zip(manifest.classes, _class_counts(base, manifest), strict=True)),
        "build": manifest.build,
    }


def _class_counts(base: Path, manifest: Manifest) -> list[int]:
    """The manifest's ``class_counts``; for an older manifest without them, counted from the
    sidecars' label column (a shard without a sidecar counts for no class)."""
    if manifest.class_counts is not None:
        return manifest.class_counts
    counts = np.zeros(len(manifest.classes), dtype=np.int64)
    for entry in manifest.shards:
        if entry.index_url and (base / entry.index_url).is_file():
            labels = read_index((base / entry.index_url).read_bytes())["label"]
            labels = labels[(labels >= 0) & (labels < len(counts))]
            counts += np.bincount(labels, minlength=len(counts))
    return [int(c) for c in counts]
