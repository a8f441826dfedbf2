"""Two decode measurements the bench does not make, each as ratios within one run (rounds
interleaved, because these machines are shared and their speed drifts). Prints one JSON line.

``crop SRC``: the training decoder with the partial JPEG decode (``loader.crop``) against
the decoder without it (OpenCV, reduced-size decode where the crop allows), on the same files
with the same generator seeds, ``S`` px ``RandomResizedCrop`` + flip. Figure: images per CPU
second of this one process (``time.process_time``, OpenCV limited to one thread), i.e. images/s
per core, which other processes on the machine disturb less than wall time.

``verify SRC``: ``shards.build.build_shards(verify="decode")`` with P worker processes, against
the bare loop P processes run over the same files: read each file and decode every pixel with
``cv2.imdecode(IMREAD_COLOR)``, nothing else (``_bare_loop``). Figure: images/s of wall time;
and, per core, ``check_image(verify="decode")`` against ``cv2.imdecode`` in one process.

    python tools/decode_bench.py crop build/bench-src --images 1000 --rounds 5
    python tools/decode_bench.py verify build/bench-src --processes 2 --rounds 3
    python tools/decode_bench.py modes build/bench-src build/bench-shards --rounds 3

``modes SRC SHARDS``: CPU seconds per 1000 samples of each bench mode (see ``modes``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from loader.decode import ImageDecoder
from shards.build import BuildOptions, build_shards
from shards.plan import SizingOptions
from shards.scan import scan_folder
from shards.validate import check_image

log = logging.getLogger("shardfeed.tools")


def _files(src: str, limit: int | None) -> list[Path]:
    paths = [Path(src) / c.rel for c in scan_folder(src).candidates]
    return paths[:limit] if limit else paths


def _crop_rate(decoder: ImageDecoder, blobs: list[bytes], seed: int) -> float:
    s = decoder.image_size
    out = np.empty((s, s, 3), np.uint8)
    rng = np.random.default_rng(seed)
    start = time.process_time()
    for data in blobs:
        decoder(data, out, rng)
    return len(blobs) / max(time.process_time() - start, 1e-9)


def crop(args: argparse.Namespace) -> dict[str, Any]:
    cv2.setNumThreads(1)
    blobs = [p.read_bytes() for p in _files(args.src, args.images)]
    new = ImageDecoder(args.image_size, train=True)
    old = ImageDecoder(args.image_size, train=True, partial_decode=False)
    _crop_rate(new, blobs[:50], 0)
    _crop_rate(old, blobs[:50], 0)
    rounds = []
    for r in range(args.rounds):
        first, second = (new, old) if r % 2 == 0 else (old, new)
        rates = {id(first): _crop_rate(first, blobs, r), id(second): _crop_rate(second, blobs, r)}
        rounds.append({"new": rates[id(new)], "old": rates[id(old)]})
        log.info("round %d: new %.0f, old %.0f images/s per core", r, *rounds[-1].values())
    ratios = [x["new"] / x["old"] for x in rounds]
    return {
        "what": "images per CPU second, training crops",
        "image_size": args.image_size,
        "images": len(blobs),
        "new_per_core": statistics.median(x["new"] for x in rounds),
        "old_per_core": statistics.median(x["old"] for x in rounds),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }


def _decode_files(paths: list[str]) -> int:
    cv2.setNumThreads(1)
    for path in paths:
        with open(path, "rb") as f:
            image = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"expected a decodable image, got {path}")
    return len(paths)


def _bare_loop(paths: list[Path], processes: int) -> float:
    """The bare read-and-decode loop: ``processes`` processes, contiguous shares of the files."""
    names = [str(p) for p in paths]
    shares = [names[i::processes] for i in range(processes)]
    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    with ctx.Pool(processes) as pool:
        done = sum(pool.map(_decode_files, shares))
    return done / (time.perf_counter() - start)


def _build(src: str, processes: int, shards: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="decode-bench-"))
    try:
        options = BuildOptions(
            sizing=SizingOptions(num_shards=shards),
            workers=processes,
            verify="decode",
            show_progress=False,
        )
        start = time.perf_counter()
        summary = build_shards(src, out / "shards", options)
        elapsed = time.perf_counter() - start
        return int(summary.get("samples", summary.get("images", 0)) or 0) / elapsed
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _per_core(blobs: list[bytes]) -> dict[str, float]:
    """One process, CPU time: ``check_image(verify="decode")`` against ``cv2.imdecode``."""
    cv2.setNumThreads(1)
    start = time.process_time()
    for data in blobs:
        check_image(data, "decode")
    check = len(blobs) / max(time.process_time() - start, 1e-9)
    start = time.process_time()
    for data in blobs:
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    full = len(blobs) / max(time.process_time() - start, 1e-9)
    return {"check_image_decode": check, "full_decode": full}


def verify(args: argparse.Namespace) -> dict[str, Any]:
    paths = _files(args.src, None)
    blobs = [p.read_bytes() for p in paths[:1000]]
    per_core = [_per_core(blobs) for _ in range(args.rounds)]
    rounds = []
    for r in range(args.rounds):
        loop = _bare_loop(paths, args.processes)
        build = _build(args.src, args.processes, args.shards)
        rounds.append({"build": build, "loop": loop})
        log.info("round %d: build --verify decode %.0f, bare loop %.0f images/s", r, build, loop)
    ratios = [x["build"] / x["loop"] for x in rounds]
    return {
        "what": "images/s, wall time",
        "processes": args.processes,
        "images": len(paths),
        "build_verify_decode": statistics.median(x["build"] for x in rounds),
        "bare_decode_loop": statistics.median(x["loop"] for x in rounds),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "per_core": {
            "what": "images per CPU second, one process, first 1000 files",
            "check_image_decode": statistics.median(x["check_image_decode"] for x in per_core),
            "full_decode": statistics.median(x["full_decode"] for x in per_core),
        },
    }


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def modes(args: argparse.Namespace) -> dict[str, Any]:
    """CPU seconds per 1000 samples of each bench mode, all its processes and threads counted
    (this process, and its workers once they are joined), over one epoch each, rounds
    interleaved; plus the epoch's wall-clock rate. CPU cost is what other users of a shared
    machine disturb least, and on dedicated cores a CPU-bound loader's rate is its inverse."""
    from loader.bench.engine import BenchConfig, _setup
    from loader.bench.modes import build_mode
    from loader.dataloader import stop_workers

    config = BenchConfig(folder=args.src, shards=args.shards, workers=args.workers)
    names = args.modes.split(",")
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in names}
    with ExitStack() as stack:
        setup = _setup(config, stack)
        for r in range(args.rounds):
            for name in names:
                cpu0, t0 = _cpu_s(), time.perf_counter()
                built = build_mode(name, setup)
                samples = 0
                try:
                    for batch in built.loader:
                        samples += len(batch.ids)
                finally:
                    stop_workers(built.loader)
                    del built
                    gc.collect()
                wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
                rows[name].append({"cpu_s_per_1k": 1000 * cpu / samples, "per_s": samples / wall})
                log.info("round %d %s: %.2f CPU s per 1k, %.0f samples/s", r, name,
                         *rows[name][-1].values())  # fmt: skip
    return {
        "what": "CPU seconds per 1000 samples (all processes), one epoch per round",
        "workers": args.workers,
        "modes": {
            name: {
                "cpu_s_per_1k": statistics.median(x["cpu_s_per_1k"] for x in got),
                "samples_per_s": statistics.median(x["per_s"] for x in got),
                "rounds": got,
            }
            for name, got in rows.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("crop")
    c.add_argument("src")
    c.add_argument("--images", type=int, default=1000)
    c.add_argument("--image-size", type=int, default=224)
    c.add_argument("--rounds", type=int, default=5)
    v = sub.add_parser("verify")
    v.add_argument("src")
    v.add_argument("--processes", type=int, default=2)
    v.add_argument("--shards", type=int, default=8)
    v.add_argument("--rounds", type=int, default=3)
    m = sub.add_parser("modes")
    m.add_argument("src")
    m.add_argument("shards")
    m.add_argument("--modes", default="tar-aware,pil-folder,spdl,mosaic,litdata")
    m.add_argument("--workers", type=int, default=2)
    m.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    run = {"crop": crop, "verify": verify, "modes": modes}[args.command]
    doc = run(args)
    doc["machine"] = {"cores": os.cpu_count(), "load": os.getloadavg()}
    sys.stdout.write(json.dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
