"""Shard-builder subcommands: ``sample``, ``shard``, ``verify``, ``inspect``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from shards.build import build_shards
from shards.merge import merge_build
from shards.options import BuildOptions
from shards.plan import SizingOptions, parse_part
from shards.planfile import stored_config
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

    p = sub.add_parser(
        "shard",
        help="turn root/<class>/<image>, or a flat folder + --labels, into tar shards + manifest",
    )
    p.add_argument("src", nargs="?", help="source folder root/<class>/<image> (flat with --labels)")
    p.add_argument("out", help="output folder for shards and manifest.json")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--num-shards", type=int, help="number of shards (sizes differ by <= 1)")
    size.add_argument("--max-samples", type=int, help="at most this many samples per shard")
    size.add_argument("--max-bytes", type=_size, help="at most this many bytes per shard (256M)")
    p.add_argument("--seed", type=int, help="shuffle seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="writer processes (default 1)")
    p.add_argument("--verify", choices=VERIFY_LEVELS, help="image check (default decode)")
    p.add_argument("--resize-max-side", type=int, metavar="PX", help="re-encode to this side")
    p.add_argument("--quality", type=int, help="JPEG quality when re-encoding (default 90)")
    p.add_argument(
        "--plan-only", action="store_true", help="list and plan once into OUT; build no shard"
    )
    p.add_argument(
        "--part",
        help="build only part I of K (e.g. 2/4), from the plan in OUT if there is one "
        "(then SRC and the sizing options may be left out); finish with --merge",
    )
    p.add_argument("--merge", action="store_true", help="write the manifest of a --part build")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="plan once, build the parts as Ray tasks (on the cluster at ADDRESS, or a local "
        "Ray), merge; needs the 'ray' extra. Put it after SRC OUT",
    )
    p.add_argument("--ray-parts", type=int, metavar="K", help="Ray tasks (default: CPUs/workers)")
    p.add_argument("--resume", action="store_true", help="keep complete shards of a killed build")
    p.add_argument("--against", metavar="OTHER_ROOT", help="report images also found there")
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="SRC is a flat folder of images labelled by FILE: ImageNet's LOC_val_solution.csv "
        "or 'filename label' lines (space, tab or comma)",
    )
    p.add_argument(
        "--classes-from",
        metavar="MANIFEST",
        help="label with the class list of this build (its manifest.json or its folder), "
        "e.g. the train shards, so val labels are the same integers",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail if labelling leaves out an image, a labels-file row or a class folder",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=_shard)

    p = sub.add_parser("verify", help="re-hash shards and check them against the manifest")
    p.add_argument("out", help="folder holding manifest.json")
    p.set_defaults(func=_verify)

    p = sub.add_parser(
        "inspect", help="shards, samples, classes and their counts, skipped and duplicates"
    )
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
    from shards.sample import make_sample, split_for

    with Progress(args.images, "sample", enabled=not args.json) as progress:
        summary = make_sample(
            args.out,
            images=args.images,
            classes=args.classes,
            seed=args.seed,
            size=args.size,
            workers=args.workers,
            progress=progress.update,
            split=split_for(args.split, args.layout),
            layout=args.layout,
        )
    doc = {k: v for k, v in vars(summary).items() if k != "class_names"}
    _emit(doc, args.json)
    return 0


def _shard(args: argparse.Namespace) -> int:
    if args.merge:
        _emit(merge_build(args.out, against=args.against, workers=args.workers), args.json)
        return 0
    part = parse_part(args.part) if args.part else None
    planned = stored_config(args.out) if part is not None else None
    if args.src is None and planned is None:
        raise ValueError("expected SRC OUT (or --merge OUT, or --part I/K OUT with a plan)")
    byte_options = _byte_options(args, planned)
    if (
        args.strict
        and byte_options.get("labels") is None
        and byte_options.get("classes_from") is None
    ):
        raise ValueError(
            "expected --labels or --classes-from with --strict, got neither: --strict checks "
            "what labelling leaves out"
        )
    if args.ray is not None and (part is not None or args.plan_only or args.src is None):
        raise ValueError("expected --ray with SRC OUT and without --part or --plan-only")
    options = BuildOptions(
        **byte_options,
        workers=args.workers,
        part=part,
        resume=args.resume,
        against=args.against,
        show_progress=not args.json,
        plan_only=args.plan_only,
        strict=args.strict,
    )
    if args.ray is not None:
        from shards.raybuild import build_on_ray

        summary = build_on_ray(
            args.src, args.out, options, address=args.ray or None, parts=args.ray_parts
        )
        _emit(summary, args.json)
        return 0
    _emit(build_shards(args.src, args.out, options), args.json)
    return 0


def _byte_options(args: argparse.Namespace, planned: dict[str, Any] | None) -> dict[str, Any]:
    """Sizing, seed, verify and re-encode from the flags; a flag left out takes the plan's value
    (when a part builds from a plan) or the default."""
    sizing = (args.num_shards, args.max_samples, args.max_bytes)
    if planned is not None:
        if all(v is None for v in sizing):
            sizing = tuple(planned["sizing"][k] for k in ("num_shards", "max_samples", "max_bytes"))
    elif all(v is None for v in sizing):
        sizing = (None, None, 256 << 20)

    def pick(name: str, default: Any) -> Any:
        given = getattr(args, name)
        if given is not None:
            return given
        if planned is not None and planned.get(name) is not None:
            return planned[name]
        return default

    return {
        "sizing": SizingOptions(*sizing),
        "seed": pick("seed", 0),
        "verify": pick("verify", "decode"),
        "resize_max_side": pick("resize_max_side", None),
        "quality": pick("quality", 90),
        "labels": pick("labels", None),
        "classes_from": pick("classes_from", None),
    }


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
    doc = inspect_build(args.out)
    if args.json:
        _emit(doc, True)
        return 0
    counts = doc.pop("class_counts")
    _emit(doc, False)
    width = max((len(name) for name in counts), default=0)
    sys.stdout.write(f"per class ({len(counts)}): label  name  samples\n")
    for label, (name, count) in enumerate(counts.items()):
        sys.stdout.write(f"  {label:>5}  {name:<{width}}  {count}\n")
    return 0


def _emit(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        return
    rows = []
    for key, value in doc.items():
        if key == "labels" and isinstance(value, dict):
            rows.extend(_label_rows(value))
        else:
            rows.append((key, value))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
        sys.stdout.write(f"{key:<{width}}  {shown}\n")


def _label_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """A labelling report as one line per field: ``count (first names, ...)`` for each kind."""
    rows: list[tuple[str, Any]] = []
    for key, value in report.items():
        if isinstance(value, dict) and "count" in value:
            more = ", ..." if value["count"] > len(value["first"]) else ""
            names = f" ({', '.join(value['first'])}{more})" if value["first"] else ""
            rows.append((key, f"{value['count']}{names}"))
        else:
            rows.append((key, value))
    return rows
