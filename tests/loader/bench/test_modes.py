"""The table of bench modes is the only list: the CLI, the service and the demo derive from it."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from loader.bench import cli as bench_cli
from loader.bench.engine import BenchConfig
from loader.bench.modes import DEFAULT_MODES, MODE_NAMES, MODES, build_mode
from server.models import BenchmarkRequest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    bench_cli.register(parser.add_subparsers())
    return parser


def test_names_are_unique_and_defaults_are_a_subset() -> None:
    assert len(set(MODE_NAMES)) == len(MODES)
    assert set(DEFAULT_MODES) <= set(MODE_NAMES)
    assert all(mode.summary for mode in MODES)


def test_every_row_names_a_builder_that_exists() -> None:
    import importlib

    for mode in MODES:
        module, _, function = mode.builder.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), mode


def test_cli_default_and_all_come_from_the_table() -> None:
    args = _parser().parse_args(["bench", "--shards", "x"])
    assert bench_cli.bench_config(args).modes == DEFAULT_MODES
    args = _parser().parse_args(["bench", "--shards", "x", "--modes", "all"])
    assert bench_cli.bench_config(args).modes == MODE_NAMES
    assert BenchConfig(folder=None, shards="x").modes == DEFAULT_MODES


def test_service_accepts_exactly_the_table() -> None:
    assert BenchmarkRequest(shards="x").modes == list(DEFAULT_MODES)
    assert BenchmarkRequest(shards="x", modes=list(MODE_NAMES)).modes == list(MODE_NAMES)
    with pytest.raises(ValidationError, match="got mode='nope'"):
        BenchmarkRequest(shards="x", modes=["nope"])
    schema = BenchmarkRequest.model_json_schema()
    assert schema["properties"]["modes"]["items"]["enum"] == list(MODE_NAMES)


def test_unknown_mode_is_named() -> None:
    with pytest.raises(ValueError, match="got mode='nope'"):
        build_mode("nope", None)  # type: ignore[arg-type]
