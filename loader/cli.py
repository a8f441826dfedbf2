"""Loader subcommands (``shardfeed bench``, ``shardfeed train``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds no subcommands yet."""
