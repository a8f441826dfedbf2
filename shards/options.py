"""What ``shardfeed shard`` is asked to do (``BuildOptions``) and the error when it cannot.

``byte_config`` is the part of the options that decides the shards' bytes; it is stored in the
plan and the manifest's ``build``, and every ``--part`` of a build must give the same one
(docs/architecture.md, "Builds").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shards.plan import SizingOptions
from shards.validate import VERIFY_LEVELS

__all__ = ["BuildError", "BuildOptions"]


class BuildError(ValueError):
    """A build that cannot go on as asked; the message says what to do."""


@dataclass(frozen=True)
class BuildOptions:
    """``labels`` (a labels file for a flat SRC) and ``classes_from`` (a manifest, or a folder
    holding one, whose class list labels this build) are stored as absolute paths; ``strict``
    fails the build on any image or row the labelling leaves out (``shards.labelreport``)."""

    sizing: SizingOptions = field(default_factory=lambda: SizingOptions(max_bytes=256 << 20))
    seed: int = 0
    workers: int = 1
    verify: str = "decode"
    resize_max_side: int | None = None
    quality: int = 90
    part: tuple[int, int] | None = None
    resume: bool = False
    against: str | None = None
    show_progress: bool = True
    plan_only: bool = False
    labels: str | None = None
    classes_from: str | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        for name in ("labels", "classes_from"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(Path(value).resolve()))

    def byte_config(self) -> dict[str, Any]:
        """The options that decide the shards' bytes (not workers, part, resume or strict);
        ``labels`` and ``classes_from`` only when given, so other builds keep their config."""
        config: dict[str, Any] = {
            "seed": self.seed,
            "sizing": asdict(self.sizing),
            "verify": self.verify,
            "resize_max_side": self.resize_max_side,
            "quality": self.quality if self.resize_max_side else None,
        }
        for name in ("labels", "classes_from"):
            if getattr(self, name) is not None:
                config[name] = getattr(self, name)
        return config

    def check(self) -> None:
        """``ValueError`` naming the first option out of range."""
        if self.verify not in VERIFY_LEVELS:
            raise ValueError(
                f"expected --verify one of {', '.join(VERIFY_LEVELS)}, got --verify={self.verify!r}"
            )
        if self.workers < 1:
            raise ValueError(f"expected --workers >= 1, got --workers={self.workers}")
        if self.resize_max_side is not None and self.resize_max_side < 1:
            raise ValueError(
                f"expected --resize-max-side >= 1, got --resize-max-side={self.resize_max_side}"
            )
        if not 1 <= self.quality <= 100:
            raise ValueError(f"expected --quality between 1 and 100, got --quality={self.quality}")
