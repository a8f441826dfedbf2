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
``first_index`` plus its position in the shard. Every manifest read, from a file or fetched,
passes the one strict validation of ``shards._manifest_schema`` and then the cross-field checks
here (cumulative ``first_index``, ``num_samples``, no shard listed twice).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shards._atomic import write_json_atomic
from shards._manifest_schema import (
    FORMAT_VERSION,
    WIDS_KIND,
    ManifestError,
    ManifestModel,
    parse_manifest,
    validate_manifest,
)
from shards.format import MANIFEST_NAME

__all__ = ["Manifest", "ManifestError", "ShardEntry", "repeated_shard"]


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


def repeated_shard(entries: Iterable[tuple[str, str]]) -> str | None:
    """``"url=..."`` or ``"sha256=..."`` of the first shard listed twice among ``(url, sha256)``
    pairs (an empty sha256 is unknown, never a repeat), else ``None``. URLs are compared as
    given (the loader passes resolved paths, so two spellings of one file count as a repeat
    there). A shard listed twice would deliver its samples twice under two ids, so every
    reader of a manifest refuses it."""
    urls: set[str] = set()
    hashes: set[str] = set()
    for url, sha in entries:
        if url in urls:
            return f"url={url}"
        if sha and sha in hashes:
            return f"sha256={sha}"
        urls.add(url)
        hashes.add(sha)
    return None


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
        """Check a parsed manifest (``shards._manifest_schema``, then ``first_index``,
        ``num_samples`` and repeated shards); raises ``ManifestError`` naming the bad field."""
        plain = dict(data) if isinstance(data, Mapping) else data
        return cls._from_model(validate_manifest(plain, source), source)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "manifest") -> Manifest:
        """Parse and check a manifest's JSON text, local or fetched (see ``from_dict``)."""
        return cls._from_model(parse_manifest(text, source), source)

    @classmethod
    def _from_model(cls, model: ManifestModel, source: str) -> Manifest:
        shards: list[ShardEntry] = []
        expected_first = 0
        for i, item in enumerate(model.shardlist):
            first = expected_first if item.first_index is None else item.first_index
            if first != expected_first:
                raise ManifestError(
                    f"{source}: shardlist[{i}].first_index expected {expected_first}, got {first}"
                )
            shards.append(
                ShardEntry(
                    url=item.url,
                    nsamples=item.nsamples,
                    filesize=-1 if item.filesize is None else item.filesize,
                    sha256=item.sha256 or "",
                    first_index=first,
                    index_url=item.index_url,
                    index_sha256=item.index_sha256,
                )
            )
            expected_first += item.nsamples
        total = expected_first if model.num_samples is None else model.num_samples
        if total != expected_first:
            raise ManifestError(
                f"{source}: num_samples={total} but the shardlist sums to {expected_first}"
            )
        repeated = repeated_shard((s.url, s.sha256) for s in shards)
        if repeated is not None:
            raise ManifestError(
                f"{source}: expected each shard once in the shardlist, got {repeated} twice: "
                "its samples would be delivered twice; remove the repeat or rebuild"
            )
        counts = model.class_counts
        if counts is not None and len(counts) != len(model.classes):
            raise ManifestError(
                f"{source}: expected class_counts to give one count >= 0 per class, "
                f"got class_counts={counts!r}"
            )
        return cls(
            shards=shards,
            classes=list(model.classes),
            name=model.name,
            skipped=[s.model_dump() for s in model.skipped],
            empty_classes=list(model.empty_classes),
            duplicates=dict(model.duplicates),
            build=dict(model.build),
            class_counts=None if counts is None else list(counts),
            labels=dict(model.labels or {}),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST_NAME
        if not p.is_file():
            raise FileNotFoundError(f"no manifest at {p}: build one with 'shardfeed shard'")
        return cls.from_json(p.read_bytes(), source=str(p))

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json_atomic(Path(path), self.to_dict())
