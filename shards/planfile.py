"""The shared build plan on disk: ``OUT/.build/plan.json``, listed and planned once.

The file holds everything a part needs to write its shards without listing the source: the
classes, every candidate (``[rel, label, size]`` in scan order), the shuffled order and the
shard sizes, plus what ``--merge`` needs (options, scan skips, and for a build given
``--labels`` or ``--classes-from`` the labelling report, ``shards.labelreport``).
``plan_hash`` is the sha256 of the file's canonical JSON without that field, so two plans are
the same plan exactly when their hashes are equal, and an edited or truncated file is refused
on load.

Invariants: the file is written to a temporary name and renamed (a reader sees no plan or a
whole one); writing the same plan again is harmless, which is what lets parts that race to
plan, or a retried planning step, share one folder. See docs/architecture.md, section "Builds".
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from shards._atomic import write_bytes_atomic
from shards.plan import ShardPlan
from shards.scan import Candidate, ScanResult
from shards.writer import BUILD_DIR

__all__ = [
    "PLAN_FILE",
    "PlanError",
    "SavedPlan",
    "SourceChanged",
    "check_config",
    "check_reports",
    "check_sources",
    "plan_doc",
    "read_plan_doc",
    "stored_config",
    "write_plan",
]

PLAN_FILE = "plan.json"
FORMAT = 1


class PlanError(ValueError):
    """A plan file that cannot be used; the message names the file and what to do."""


class SourceChanged(ValueError):
    """A planned source file is gone or has another size than when the plan was made."""


def plan_doc(
    scan: ScanResult, plan: ShardPlan, config: dict[str, Any], source: Path
) -> dict[str, Any]:
    """The plan document (``plan_hash`` included) of ``scan`` cut by ``plan``."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "fingerprint": plan.fingerprint(scan.candidates),
        "config": config,
        "source": str(source),
        "classes": scan.classes,
        "empty_classes": scan.empty_classes,
        "num_shards": len(plan.shards),
        "num_candidates": len(scan.candidates),
        "scan_skipped": [s.to_dict() for s in scan.skipped],
        "candidates": [[c.rel, c.label, c.size] for c in scan.candidates],
        "order": plan.order.tolist(),
        "shard_sizes": [len(s) for s in plan.shards],
    }
    if scan.labels is not None:
        doc["labels"] = scan.labels.to_dict()
    doc["plan_hash"] = _hash(doc)
    return doc


def _hash(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "plan_hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def stored_config(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The byte options (``BuildOptions.byte_config`` form) of the plan in ``out``, or None."""
    path = Path(out) / BUILD_DIR / PLAN_FILE
    if not path.is_file():
        return None
    config: dict[str, Any] = read_plan_doc(path)["config"]
    return config


def write_plan(path: Path, doc: dict[str, Any]) -> None:
    """Save ``doc`` at ``path`` (temporary name, then rename) as ASCII JSON: a file name that
    is not UTF-8 (a lone surrogate in Python) survives as a ``\\udcXX`` escape."""
    text = json.dumps(doc, separators=(",", ":")) + "\n"
    write_bytes_atomic(path, text.encode("ascii"))


def read_plan_doc(path: Path) -> dict[str, Any]:
    """The plan document at ``path``, its hash checked; ``PlanError`` when it does not add up."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot read the build plan {path}: {exc}; plan again") from None
    if not isinstance(doc, dict) or "plan_hash" not in doc:
        raise PlanError(f"expected a build plan with a plan_hash in {path}; plan again")
    if doc.get("format") == FORMAT and _hash(doc) != doc["plan_hash"]:
        raise PlanError(
            f"the build plan {path} does not match its own hash (edited or damaged); "
            "plan again into an empty folder"
        )
    return doc


class _Rows(Sequence[Candidate]):
    """The plan's ``[rel, label, size]`` rows as ``Candidate``s, made when indexed (a part
    touches only its own)."""

    def __init__(self, rows: list[list[Any]]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, i: int) -> Candidate: ...
    @overload
    def __getitem__(self, i: slice) -> list[Candidate]: ...
    def __getitem__(self, i: int | slice) -> Candidate | list[Candidate]:
        if isinstance(i, slice):
            return [Candidate(str(r), int(lab), int(s)) for r, lab, s in self._rows[i]]
        rel, label, size = self._rows[i]
        return Candidate(str(rel), int(label), int(size))


@dataclass(frozen=True)
class SavedPlan:
    """A plan read back: candidates and shards as ``plan_shards`` made them."""

    doc: dict[str, Any]
    candidates: Sequence[Candidate]
    plan: ShardPlan

    @property
    def hash(self) -> str:
        return str(self.doc["plan_hash"])

    @classmethod
    def load(cls, path: Path) -> SavedPlan:
        """Read ``path``; ``PlanError`` for a plan without candidates (made by an older build)."""
        doc = read_plan_doc(path)
        if doc.get("format") != FORMAT:
            raise PlanError(
                f"expected a build plan of format {FORMAT} in {path}, got "
                f"format={doc.get('format')!r}; plan again into an empty folder"
            )
        candidates = _Rows(doc["candidates"])
        order = np.asarray(doc["order"], dtype=np.int64)
        cuts = np.cumsum(doc["shard_sizes"])[:-1]
        return cls(doc, candidates, ShardPlan(order, list(np.split(order, cuts))))


def check_sources(root: Path, items: Sequence[tuple[int, Candidate]]) -> None:
    """Raise ``SourceChanged`` naming the first planned file that is gone or changed size."""
    for _, cand in items:
        try:
            size = os.stat(root / cand.rel).st_size
        except FileNotFoundError:
            raise SourceChanged(
                f"source changed since planning: {cand.rel} is gone (planned {cand.size} "
                "bytes); plan again into an empty folder"
            ) from None
        except OSError:
            continue  # unreadable now: the writer skips it with the reason, as a fresh build
        if size != cand.size:
            raise SourceChanged(
                f"source changed since planning: {cand.rel} has {size} bytes, planned "
                f"{cand.size}; plan again into an empty folder"
            )


def check_config(doc: dict[str, Any], given: dict[str, Any]) -> None:
    """``PlanError`` unless ``given`` (``BuildOptions.byte_config``) equals the plan's options."""
    planned = doc["config"]
    for key in sorted(given):
        if given[key] != planned.get(key):
            raise PlanError(
                f"expected a part to use the options of the plan, got {key}={given[key]!r} "
                f"where the plan has {key}={planned.get(key)!r}; give the plan's options "
                "(or none of them)"
            )


def check_reports(dest: Path, plan_hash: str, reports: Sequence[dict[str, Any]]) -> None:
    """``PlanError`` naming the parts whose shard reports name another plan than ``plan_hash``."""
    strays: dict[str, list[str]] = {}
    for r in reports:
        if r.get("plan") != plan_hash:
            strays.setdefault(r.get("part") or "(whole build)", []).append(r["url"])
    if not strays:
        return
    named = "; ".join(
        f"part {part} ({', '.join(urls[:3])}{' ...' if len(urls) > 3 else ''})"
        for part, urls in sorted(strays.items())
    )
    raise PlanError(
        f"cannot merge {dest}: shards written from another plan than {plan_hash[:12]}: "
        f"{named}; rebuild those parts from the plan in {dest}"
    )
