"""Source content duplicates, by hash: reported, never removed (docs/architecture.md, "Format").

Three findings: exact duplicates (two or more sharded images with the same bytes), the subset
whose copies carry different labels (label noise), and images that also occur in a second
folder given with ``--against``, with class folders or flat (a train/val leak).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shards.scan import list_images

__all__ = ["duplicate_report", "hash_folder"]


def duplicate_report(
    samples: Iterable[Sequence[Any]],
    classes: Sequence[str],
    against: dict[str, list[str]] | None = None,
    against_root: str | None = None,
) -> dict[str, Any]:
    """Group ``samples`` (``[key, rel_path, label, sha256]``) by hash into the report.

    ``against`` maps a sha256 to the paths that carry it in the other folder.
    """
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for _key, rel, label, sha in samples:
        groups[sha].append((rel, label))
    exact: list[dict[str, Any]] = []
    conflicting: list[dict[str, Any]] = []
    for sha, members in groups.items():
        if len(members) < 2:
            continue
        members.sort()
        entry = {
            "sha256": sha,
            "paths": [m[0] for m in members],
            "classes": sorted({classes[m[1]] for m in members}),
        }
        exact.append(entry)
        if len(entry["classes"]) > 1:
            conflicting.append(entry)
    exact.sort(key=lambda e: e["paths"][0])
    conflicting.sort(key=lambda e: e["paths"][0])
    report: dict[str, Any] = {
        "exact_groups": len(exact),
        "extra_copies": sum(len(e["paths"]) - 1 for e in exact),
        "conflicting_label_groups": len(conflicting),
        "exact": exact,
        "conflicting_labels": conflicting,
    }
    if against is not None:
        leaks: list[dict[str, Any]] = [
            {"path": rel, "sha256": sha, "other_paths": sorted(against[sha])}
            for sha, members in groups.items()
            if sha in against
            for rel, _label in members
        ]
        leaks.sort(key=lambda e: e["path"])
        report["against"] = {"root": against_root, "matches": len(leaks), "images": leaks}
    return report


def hash_folder(
    root: str | os.PathLike[str],
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[str]]:
    """sha256 of every image file under ``root`` -> relative paths.

    ``root`` may hold class folders or be a flat folder of images (``shards.scan.list_images``);
    files that cannot be read are left out; this index is only used to find leaks.
    """
    images = list_images(root)
    base = Path(root)

    def digest(rel: str) -> tuple[str, str | None]:
        try:
            with open(base / rel, "rb") as f:
                return rel, hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            return rel, None

    index: dict[str, list[str]] = defaultdict(list)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for rel, sha in pool.map(digest, (c.rel for c in images)):
            if sha is not None:
                index[sha].append(rel)
            if progress is not None:
                progress(1)
    return dict(index)
