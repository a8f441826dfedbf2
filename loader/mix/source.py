"""``Source``: one dataset of a mix and how much of each epoch it gets
(docs/architecture.md, "Mixing").

A source names its share in exactly one of three ways: ``weight`` (a share of the epoch's
weighted part; weights are normalised), ``repeat`` (a multiple of its own size per epoch,
rounded half up) or ``samples`` (a fixed count per epoch). Per-source options: ``label_offset``
or ``class_map`` (the head's label of each of its class names) and ``bad_samples``
(``loader.badsamples``; ``None``: the loader's).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loader.badsamples import BAD_SAMPLE_POLICIES

__all__ = ["EXHAUSTION", "MixError", "Source"]

EXHAUSTION = ("cycle", "stop")


class MixError(ValueError):
    """A mix that cannot be planned; the message names the source and what to do."""


@dataclass(frozen=True)
class Source:
    """One dataset of a mix: ``location`` (a manifest path or URL, a shard list or a brace
    pattern, as for a single dataset) and exactly one of ``weight``, ``repeat``, ``samples``."""

    location: str | os.PathLike[str] | Sequence[str]
    weight: float | None = None
    repeat: float | None = None
    samples: int | None = None
    name: str | None = None
    label_offset: int = 0
    class_map: Mapping[str, int] | None = None
    bad_samples: str | None = None

    def __post_init__(self) -> None:
        given = {
            k: v
            for k, v in (
                ("weight", self.weight),
                ("repeat", self.repeat),
                ("samples", self.samples),
            )
            if v is not None
        }
        if len(given) != 1:
            got = ", ".join(f"{k}={v!r}" for k, v in given.items()) or "none of them"
            raise MixError(
                f"expected exactly one of weight=, repeat=, samples= for source {self.label}, "
                f"got {got}: give one"
            )
        if self.samples is not None:
            if isinstance(self.samples, bool) or not isinstance(self.samples, int):
                raise MixError(
                    f"expected an integer samples >= 0 for source {self.label}, "
                    f"got samples={self.samples!r}"
                )
            if self.samples < 0:
                raise MixError(
                    f"expected samples >= 0 for source {self.label}, got samples={self.samples}"
                )
        for key in ("weight", "repeat"):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise MixError(
                    f"expected a number {key} > 0 for source {self.label}, got {key}={value!r}"
                )
            if not (math.isfinite(value) and value > 0):
                raise MixError(
                    f"expected a finite {key} > 0 for source {self.label}, got {key}={value!r}"
                )
        if isinstance(self.label_offset, bool) or not isinstance(self.label_offset, int):
            raise MixError(
                f"expected an integer label_offset for source {self.label}, "
                f"got label_offset={self.label_offset!r}"
            )
        if self.label_offset and self.class_map is not None:
            raise MixError(
                f"expected label_offset or class_map for source {self.label}, got both: keep one"
            )
        if self.label_offset < 0:
            raise MixError(
                f"expected label_offset >= 0 for source {self.label}, "
                f"got label_offset={self.label_offset}"
            )
        if self.bad_samples is not None and self.bad_samples not in BAD_SAMPLE_POLICIES:
            raise MixError(
                f"expected bad_samples in {BAD_SAMPLE_POLICIES} or None for source "
                f"{self.label}, got bad_samples={self.bad_samples!r}"
            )

    @property
    def label(self) -> str:
        """How messages name this source: its ``name``, else its location."""
        if self.name is not None:
            return repr(self.name)
        where = self.location
        if isinstance(where, Sequence) and not isinstance(where, str):
            where = f"[{len(where)} shards]" if len(where) > 1 else str(where[0] if where else "")
        return repr(os.fspath(where) if isinstance(where, os.PathLike) else where)
