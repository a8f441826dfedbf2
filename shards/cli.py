"""Shard-builder subcommands: ``sample``, ``shard``, ``verify``, ``inspect``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from shards.build import BuildOptions, build_shards, merge_build
from shards.plan import SizingOptions, parse_part
from shards.validate import VERIFY_LEVELS
from shards.verify import inspect_build, verify_build

__all__ = ["COMMANDS", "register"]

COMMANDS = frozenset({"inspect", "sample", "shard", "verify"})

log = logging.getLogger("shardfeed")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the shard builder's subcommands to the ``shardfeed`` parser."""
    from shards.sample import add_sample_arguments

    p = sub.add_parser("sample", help="make a deterministic ImageNet-like image folder")
    add_sample_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_sample)

    p = sub.add_parser("shard", help="turn root/<class>/<image> into tar shards + manifest")
    p.add_argument("src", nargs="?", help="source folder root/<class>/<image>")
    p.add_argument("out", help="output folder for shards and manifest.json")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--num-shards", type=int, help="number of shards (sizes differ by <= 1)")
    size.add_argument("--max-samples", type=int, help="at most this many samples per shard")
    size.add_argument("--max-bytes", type=_size, help="at most this many bytes per shard (256M)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="writer processes (default 1)")
    p.add_argument("--verify", choices=VERIFY_LEVELS, default="decode", help="image check")
    p.add_argument("--resize-max-side", type=int, metavar="PX", help="re-encode to this side")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality when re-encoding")
    p.add_argument("--part", help="build only part I of K (e.g. 2/4); finish with --merge")
    p.add_argument("--merge", action="store_true", help="write the manifest of a --part build")
    p.add_argument("--resume", action="store_true", help="keep complete shards of a killed build")
    p.add_argument("--against", metavar="OTHER_ROOT", help="report images also found there")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=_shard)

    p = sub.add_parser("verify", help="re-hash shards and check them against the manifest")
    p.add_argument("out", help="folder holding manifest.json")
    p.set_defaults(func=_verify)

    p = sub.add_parser("inspect", help="shards, samples, classes, skipped and duplicates")
    p.add_argument("out", help="folder holding manifest.json")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_inspect)


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 256M or 1G, got {text!r}") from None


def _sample(args: argparse.Namespace) -> int:
    from shards._progress import Progress
    from shards.sample import make_sample

    with Progress(args.images, "sample", enabled=not args.json) as progress:
        summary = make_sample(
            args.out,
            images=args.images,
            classes=args.classes,
            seed=args.seed,
            size=args.size,
            workers=args.workers,
            progress=progress.update,
        )
    doc = {k: v for k, v in vars(summary).items() if k != "class_names"}
    _emit(doc, args.json)
    return 0


def _shard(args: argparse.Namespace) -> int:
    if args.merge:
        _emit(merge_build(args.out, against=args.against, workers=args.workers), args.json)
        return 0
    if args.src is None:
        raise ValueError("expected SRC OUT (or --merge OUT), got only OUT")
    if args.num_shards is None and args.max_samples is None and args.max_bytes is None:
        args.max_bytes = 256 << 20
    options = BuildOptions(
        sizing=SizingOptions(args.num_shards, args.max_samples, args.max_bytes),
        seed=args.seed,
        workers=args.workers,
        verify=args.verify,
        resize_max_side=args.resize_max_side,
        quality=args.quality,
        part=parse_part(args.part) if args.part else None,
        resume=args.resume,
        against=args.against,
        show_progress=not args.json,
    )
    _emit(build_shards(args.src, args.out, options), args.json)
    return 0


def _verify(args: argparse.Namespace) -> int:
    problems = verify_build(args.out)
    for line in problems:
        sys.stdout.write(f"{line}\n")
    if problems:
        sys.stderr.write(f"shardfeed verify: {len(problems)} problem(s) in {args.out}\n")
        return 1
    sys.stdout.write(f"ok: every shard in {args.out} matches its manifest\n")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    _emit(inspect_build(args.out), args.json)
    return 0


def _emit(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        return
    width = max(len(k) for k in doc)
    for key, value in doc.items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
        sys.stdout.write(f"{key:<{width}}  {shown}\n")
