"""``shardfeed bench``: its options and handler.

Option values are parsed by the handlers, not by argparse, so a bad value is a
``ValueError`` that ``server.cli`` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from loader.bench.modes import DECODES, DEFAULT_MODES, MODE_NAMES

if TYPE_CHECKING:
    from loader.bench.engine import BenchConfig

__all__ = ["COMMAND", "bench_config", "register"]

COMMAND = "bench"

log = logging.getLogger("shardfeed.bench")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``shardfeed bench`` to the ``shardfeed`` parser."""
    p = sub.add_parser(
        "bench",
        help="measure map-style, tar and worker-aware loading against the raw limit",
        description="Run every mode on the same data and report samples, duplicates, missing, "
        'samples/s and the ratio to the limit (docs/architecture.md, "Benchmark").',
    )
    p.add_argument("--folder", metavar="SRC", help="source image folder (map mode reads it)")
    p.add_argument("--shards", metavar="DIR", required=True, help="shard folder or manifest")
    p.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated modes of {', '.join(MODE_NAMES)}, or 'all' "
        f"(default {','.join(DEFAULT_MODES)})",
    )
    p.add_argument("--workers", default="2", metavar="W", help="DataLoader workers (default 2)")
    p.add_argument("--batch-size", default="64", metavar="B", help="batch size (default 64)")
    p.add_argument("--epochs", default="1", metavar="E", help="epochs per mode (default 1)")
    p.add_argument("--image-size", default="224", metavar="S", help="output side (default 224)")
    p.add_argument("--latency-ms", default="0", metavar="X", help="simulated ms per open")
    p.add_argument(
        "--decode", default="opencv", metavar="{" + ",".join(DECODES) + "}", help="none: no decode"
    )
    p.add_argument("--repeat", default="1", metavar="R", help="interleaved rounds (median)")
    p.add_argument("--seed", default="0", help="seed for shuffles and crops (default 0)")
    p.add_argument("--http", action="store_true", help="serve folder and shards over HTTP")
    p.add_argument(
        "--fault-rate",
        default="0",
        metavar="P",
        help="with --http: fraction of requests answered with a 503 or a dropped connection",
    )
    p.add_argument(
        "--cache",
        action="store_true",
        help="with --http: tar-aware reads through a fresh node-local shard cache",
    )
    p.add_argument(
        "--limit-local",
        action="store_true",
        help="with --http: measure the limit on the local shard files, without latency",
    )
    p.add_argument(
        "--mix",
        action="store_true",
        help="instead of the modes: the shards as one source against a 2- and a 5-source mix "
        "of them, and the planning cost of a large mix (loader.bench.mix)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_bench)


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer for --{name}, got {name}={text!r}") from None


def _float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number for --{name}, got {name}={text!r}") from None


def _modes(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return MODE_NAMES
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes:
        raise ValueError(f"expected a comma-separated list of modes, got modes={text!r}")
    return modes


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The ``BenchConfig`` the options describe, validated; ``ValueError`` for a bad value."""
    from loader.bench.engine import BenchConfig

    if args.decode not in DECODES:
        raise ValueError(f"expected --decode {' or '.join(DECODES)}, got decode={args.decode!r}")
    config = BenchConfig(
        folder=args.folder,
        shards=args.shards,
        modes=_modes(args.modes),
        workers=_int("workers", args.workers),
        batch_size=_int("batch-size", args.batch_size),
        epochs=_int("epochs", args.epochs),
        image_size=_int("image-size", args.image_size),
        latency_ms=_float("latency-ms", args.latency_ms),
        decode=args.decode != "none",
        repeat=_int("repeat", args.repeat),
        http=args.http,
        seed=_int("seed", args.seed),
        fault_rate=_float("fault-rate", args.fault_rate),
        cache=args.cache,
        limit_local=args.limit_local,
    )
    config.validate()
    return config


def _log_event(event: dict[str, Any]) -> None:
    kind, mode = event["type"], event.get("mode")
    if kind == "limit":
        log.info("round %d limit: %.0f samples/s", event["round"], event["samples_per_s"])
    elif kind == "epoch":
        net = ""
        if "retries" in event:
            net = f", {event['retries']} retries, {event['cache_fills']} cache fills"
        log.info(
            "round %d %s epoch %d: %d samples, %.0f samples/s%s",
            event["round"], mode, event["epoch"], event["samples"], event["samples_per_s"], net,
        )  # fmt: skip
    elif kind == "mode_done" and event.get("status") != "ok" and event["round"] == 0:
        log.info("%s: %s: %s", mode, event["status"], event.get("reason"))


def _bench(args: argparse.Namespace) -> int:
    from loader.bench.engine import run_bench
    from loader.bench.report import format_table
    from loader.jsonsafe import dumps

    config = bench_config(args)
    if getattr(args, "mix", False):
        return _bench_mix(config, args.json)
    if not log.isEnabledFor(logging.DEBUG):
        for name in ("litdata", "spdl", "streaming"):
            logging.getLogger(name).setLevel(logging.WARNING)
    doc = run_bench(config, on_event=_log_event)
    if args.json:
        sys.stdout.write(dumps(doc) + "\n")
    else:
        sys.stdout.write(format_table(doc))
    return 0


def _bench_mix(config: BenchConfig, as_json: bool) -> int:
    """``--mix``: ``loader.bench.mix.bench_mix`` on the shards, as JSON or a short table."""
    from loader.bench.mix import bench_mix
    from loader.jsonsafe import dumps

    if config.http or config.folder:
        raise ValueError("expected --mix without --http or --folder: it reads local shards only")
    doc = bench_mix(
        config.shards,
        workers=config.workers,
        batch_size=config.batch_size,
        image_size=config.image_size,
        decode=config.decode,
        repeat=config.repeat,
        seed=config.seed,
        on_round=lambda name, r, rate: log.info("round %d %s: %.0f samples/s", r, name, rate),
    )
    if as_json:
        sys.stdout.write(dumps(doc) + "\n")
        return 0
    lines = [f"{'run':<8} {'samples/s':>10} {'ratio':>6}  duplicates/missing per source"]
    for name, result in doc["results"].items():
        ratio = result.get("ratio_to_single")
        per = " ".join(f"{c['duplicates']}/{c['missing']}" for c in result.get("sources", []))
        cell = "" if ratio is None else f"{ratio:.3f}"
        lines.append(f"{name:<8} {result['samples_per_s']:>10.0f} {cell:>6}  {per}")
    plan = doc["plan"]
    lines.append(
        f"plan of {plan['samples']} samples, {plan['sources']} sources, {plan['ranks']}x"
        f"{plan['workers']}: {plan['plan_ms']:.0f} ms all workers, {plan['worker_ms']:.2f} ms "
        f"one worker, rank state {plan['state_bytes']} bytes"
    )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
