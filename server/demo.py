"""``shardfeed demo``: sample → shard → bench (through the service) → a live training job.

The service runs in a background thread of this process on 127.0.0.1; the benchmarks are posted
to its API (so the dashboard shows them queue, run and finish) and the training job reports to
it. With ``serve`` the service keeps running until Ctrl-C; otherwise it stops after the work.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from loader.bench.modes import DEFAULT_MODES
from loader.jsonsafe import dumps
from server.app import create_app
from server.runs import FINISHED
from server.settings import Settings
from shards.format import MANIFEST_NAME

__all__ = ["DemoOptions", "register_demo", "run_demo"]

log = logging.getLogger("shardfeed.demo")


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path = Path("build/demo")
    images: int = 2000
    classes: int = 10
    size: str = "imagenet"
    shards: int = 8
    workers: int = 2
    batch_size: int = 64
    bench_epochs: int = 1
    latency_ms: float = 5.0
    train_epochs: int = 2
    image_size: int = 64
    host: str = "127.0.0.1"
    port: int = 8000
    serve: bool = True


def run_demo(
    options: DemoOptions, on_ready: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Do the whole tour; returns what it did (bench ids and results, training epochs, URL).

    ``on_ready(summary)`` is called once the work is done, before the service is left running.
    """
    from loader.train.loop import train
    from loader.train.options import TrainOptions
    from shards.build import BuildOptions, build_shards
    from shards.plan import SizingOptions
    from shards.sample import make_sample

    work = options.workdir.resolve()
    src, shards = work / "src", work / "shards"
    if not (shards / MANIFEST_NAME).is_file():
        if src.exists() and any(src.iterdir()):
            raise ValueError(f"{src} exists without its shards: remove {work} and run again")
        log.info("making a %d-image sample in %s", options.images, src)
        make_sample(
            src, images=options.images, classes=options.classes, seed=0, size=options.size,
            workers=options.workers,
        )  # fmt: skip
        log.info("sharding into %s", shards)
        build_shards(
            src,
            shards,
            BuildOptions(sizing=SizingOptions(num_shards=options.shards), workers=options.workers),
        )
    else:
        log.info("reusing the sample and shards in %s", work)
    settings = Settings(
        host=options.host, port=options.port, db=work / "shardfeed.db", data_roots=[work]
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host=options.host, port=options.port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, name="shardfeed-demo-server", daemon=True)
    thread.start()
    try:
        url = _wait_started(server, thread, options.host)
        log.info("service at %s", url)
        runs = []
        for latency in (0.0, options.latency_ms):
            body = {
                "folder": str(src),
                "shards": str(shards),
                "modes": list(DEFAULT_MODES),
                "workers": options.workers,
                "batch_size": options.batch_size,
                "epochs": options.bench_epochs,
                "image_size": 224,
                "latency_ms": latency,
            }
            runs.append(_post(f"{url}/api/benchmarks", body)["id"])
        results = {run: _wait_done(url, run) for run in runs}
        log.info(
            "training %d epoch(s), reporting to %s as job 'demo-train'", options.train_epochs, url
        )
        epochs = train(
            TrainOptions(
                shards=str(shards),
                epochs=options.train_epochs,
                batch_size=options.batch_size,
                workers=options.workers,
                image_size=options.image_size,
                report_url=url,
                job="demo-train",
            )
        )
        summary = {
            "url": url,
            "benchmarks": results,
            "train": [{k: v for k, v in vars(e).items() if k != "step_losses"} for e in epochs],
        }
        if on_ready is not None:
            on_ready(summary)
        if options.serve:
            sys.stderr.write(f"\nshardfeed demo: dashboard at {url}/  (Ctrl-C stops)\n")
            while thread.is_alive():
                thread.join(timeout=0.5)
        return summary
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _wait_started(server: uvicorn.Server, thread: threading.Thread, host: str) -> str:
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            raise OSError(f"the service could not start on {host} (is the port in use?)")
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not start within 30 s")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://{host}:{port}"


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        result: dict[str, Any] = json.load(resp)
        return result


def _wait_done(url: str, run: str) -> dict[str, Any]:
    shown = -1.0
    while True:
        with urllib.request.urlopen(f"{url}/api/benchmarks/{run}", timeout=30) as resp:
            doc: dict[str, Any] = json.load(resp)
        if doc["status"] in FINISHED:
            if doc["status"] != "done":
                raise RuntimeError(f"benchmark {run} ended {doc['status']}: {doc.get('error')}")
            log.info("benchmark %s done", run)
            return doc
        progress = float(doc.get("progress") or 0.0)
        if progress - shown >= 0.1:
            shown = progress
            log.info("benchmark %s: %s, %.0f%%", run, doc["status"], 100 * progress)
        time.sleep(0.5)


def register_demo(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``shardfeed`` subcommands."""
    p = sub.add_parser("demo", help="sample -> shard -> bench -> serve, with a live training job")
    p.add_argument("--dir", type=Path, default=Path("build/demo"), help="work folder")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--size", choices=("imagenet", "small", "tiny"), default="imagenet")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--latency-ms", type=float, default=5.0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", action="store_true", help="exit after the work")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    if args.images < args.classes or args.classes < 1:
        raise ValueError(
            f"expected 1 <= --classes <= --images, got --classes={args.classes} "
            f"--images={args.images}"
        )
    run_demo(
        DemoOptions(
            workdir=args.dir,
            images=args.images,
            classes=args.classes,
            size=args.size,
            workers=args.workers,
            batch_size=args.batch_size,
            train_epochs=args.train_epochs,
            latency_ms=args.latency_ms,
            host=args.host,
            port=args.port,
            serve=not args.no_serve,
        ),
        on_ready=_print_json if args.json else _print_table,
    )
    return 0


def _print_json(summary: dict[str, Any]) -> None:
    sys.stdout.write(dumps(summary) + "\n")
    sys.stdout.flush()


def _mode_line(mode: str, fig: dict[str, Any]) -> str:
    """One mode's figures with the limit its ratio used; a noisy ratio is marked, not shown
    as a result (``loader.bench.noise``)."""
    ratio, limit = fig.get("ratio_to_limit"), fig.get("limit_samples_per_s")
    against = "-" if ratio is None else f"{ratio:.2f}x"
    against += "" if limit is None else f" limit {limit:.0f}/s"
    if fig.get("noisy"):
        spread = fig.get("limit_spread")
        against += " noisy" + ("" if spread is None else f" ±{100 * spread:.0f}%")
    return (
        f"  {mode:<15} {fig['samples_per_s']:>9.0f} samples/s  {against}  "
        f"duplicates {fig['duplicates']}  missing {fig['missing']}\n"
    )


def _print_table(summary: dict[str, Any]) -> None:
    from loader.train.options import format_loss

    for run, doc in summary["benchmarks"].items():
        latency = doc["result"]["config"]["latency_ms"]
        sys.stdout.write(f"benchmark {run} (latency {latency} ms):\n")
        for mode, fig in doc["result"]["modes"].items():
            if fig.get("status", "ok") != "ok":
                sys.stdout.write(f"  {mode:<15} {fig['status']}: {fig.get('reason')}\n")
                continue
            sys.stdout.write(_mode_line(mode, fig))
    for e in summary["train"]:
        sys.stdout.write(
            f"train epoch {e['epoch']}: {e['samples_per_s']:.0f} samples/s, "
            f"loss {format_loss(e['loss'])}, "
            f"acc {e['accuracy']:.3f}, duplicates {e['duplicates']}, missing {e['missing']}\n"
        )
    sys.stdout.flush()
