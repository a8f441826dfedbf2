"""``shardfeed serve`` (filled in by the service issue)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds no subcommands yet."""
