"""Tests for server/cli.py: each command loads only the parts it needs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "fastapi", "uvicorn", "pydantic")


def modules_loaded_for(command: str | None) -> list[str]:
    """Which of ``HEAVY`` a fresh interpreter has imported after building the parser."""
    code = (
        "import json, sys\n"
        "from server.cli import build_parser\n"
        f"parser = build_parser({command!r})\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded: list[str] = json.loads(proc.stdout)
    return loaded


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # pydantic validates manifests (shards._manifest_schema): no web stack, no torch
        ("shard", ["pydantic"]),
        ("verify", ["pydantic"]),
        ("doctor", []),
        ("train", ["torch", "pydantic"]),
        ("bench", ["torch", "pydantic"]),
        ("serve", list(HEAVY)),
        (None, list(HEAVY)),
    ],
)
def test_a_command_loads_only_what_it_needs(command: str | None, expected: list[str]) -> None:
    assert modules_loaded_for(command) == expected


def test_every_command_is_in_the_full_parser() -> None:
    from server.cli import build_parser

    parser = build_parser()
    for argv in (["shard", "a", "b"], ["train", "--shards", "x"], ["bench", "--shards", "x"]):
        assert parser.parse_args(argv).command == argv[0]
    assert parser.parse_args(["serve"]).command == "serve"
    assert parser.parse_args(["demo", "--no-serve"]).command == "demo"
