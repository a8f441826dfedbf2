"""``manifest.json``: a superset of the wids shard index (docs/architecture.md, "Format").

Layout::

    {"__kind__": "wids-shard-index-v1", "wids_version": 1,
     "name": str, "shardfeed_format": 1,
     "shardlist": [{"url": "shard-000000.tar", "nsamples": n, "filesize": bytes,
                    "sha256": hex, "first_index": gid_of_first_sample,
                    "index_url": "shard-000000.idx.npy", "index_sha256": hex}, ...],
     "classes": [class names in label order], "num_samples": total,
     "class_counts": [samples of each class, in label order],
     "skipped": [{"path": rel, "reason": str}, ...],
     "duplicates": {...}, "build": {...},
     "labels": {...}}

``labels`` (what labelling left out, ``shards.labelreport``) is present only for a build given
``--labels`` or ``--classes-from``; ``class_counts`` may be missing in manifests of older builds.

``url`` values are relative to the manifest's own location. A sample's global id is its shard's
``first_index`` plus its position in the shard.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shards._atomic import write_json_atomic
from shards.format import MANIFEST_NAME

__all__ = ["Manifest", "ManifestError", "ShardEntry"]

WIDS_KIND = "wids-shard-index-v1"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A manifest that is missing, malformed or inconsistent; the message names the field."""


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it."""

    url: str
    nsamples: int
    filesize: int
    sha256: str
    first_index: int
    index_url: str | None = None
    index_sha256: str | None = None


@dataclass
class Manifest:
    """The dataset a build produced; ``shards`` are in global-id order."""

    shards: list[ShardEntry]
    classes: list[str]
    name: str = "shardfeed"
    skipped: list[dict[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    duplicates: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    class_counts: list[int] | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(s.nsamples for s in self.shards)

    def skipped_by_reason(self) -> dict[str, int]:
        """How many files were skipped for each kind of reason (the text before any colon)."""
        counts = Counter(s["reason"].split(":")[0] for s in self.skipped)
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "__kind__": WIDS_KIND,
            "wids_version": 1,
            "name": self.name,
            "shardfeed_format": FORMAT_VERSION,
            "shardlist": [asdict(s) for s in self.shards],
            "classes": list(self.classes),
            "num_samples": self.num_samples,
            "skipped": list(self.skipped),
            "empty_classes": list(self.empty_classes),
            "duplicates": self.duplicates,
            "build": self.build,
        }
        if self.class_counts is not None:
            doc["class_counts"] = list(self.class_counts)
        if self.labels:
            doc["labels"] = self.labels
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "manifest") -> Manifest:
        """Parse and check a manifest; raises ``ManifestError`` naming the bad field."""
        if data.get("__kind__") != WIDS_KIND:
            raise ManifestError(
                f"{source}: expected __kind__={WIDS_KIND!r}, got __kind__={data.get('__kind__')!r}"
            )
        raw = data.get("shardlist")
        if not isinstance(raw, list) or not raw:
            raise ManifestError(f"{source}: expected a non-empty list in 'shardlist', got {raw!r}")
        shards: list[ShardEntry] = []
        expected_first = 0
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or "url" not in item or "nsamples" not in item:
                raise ManifestError(f"{source}: shardlist[{i}] needs 'url' and 'nsamples'")
            n = item["nsamples"]
            if not isinstance(n, int) or n < 0:
                raise ManifestError(f"{source}: shardlist[{i}].nsamples must be >= 0, got {n!r}")
            first = item.get("first_index", expected_first)
            if first != expected_first:
                raise ManifestError(
                    f"{source}: shardlist[{i}].first_index expected {expected_first}, got {first}"
                )
            shards.append(
                ShardEntry(
                    url=str(item["url"]),
                    nsamples=n,
                    filesize=int(item.get("filesize", -1)),
                    sha256=str(item.get("sha256", "")),
                    first_index=first,
                    index_url=item.get("index_url"),
                    index_sha256=item.get("index_sha256"),
                )
            )
            expected_first += n
        total = data.get("num_samples", expected_first)
        if total != expected_first:
            raise ManifestError(
                f"{source}: num_samples={total} but the shardlist sums to {expected_first}"
            )
        counts = data.get("class_counts")
        if counts is not None and (
            not isinstance(counts, list)
            or not all(isinstance(c, int) and c >= 0 for c in counts)
            or len(counts) != len(data.get("classes", []))
        ):
            raise ManifestError(
                f"{source}: expected class_counts to give one count >= 0 per class, "
                f"got class_counts={counts!r}"
            )
        return cls(
            shards=shards,
            classes=list(data.get("classes", [])),
            name=str(data.get("name", "shardfeed")),
            skipped=list(data.get("skipped", [])),
            empty_classes=list(data.get("empty_classes", [])),
            duplicates=dict(data.get("duplicates", {})),
            build=dict(data.get("build", {})),
            class_counts=None if counts is None else [int(c) for c in counts],
            labels=dict(data.get("labels") or {}),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST_NAME
        if not p.is_file():
            raise FileNotFoundError(f"no manifest at {p}: build one with 'shardfeed shard'")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{p}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(p))

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json_atomic(Path(path), self.to_dict())
