"""Decode in the workers against decode on the device, on the same shards
(docs/architecture.md, section "Device decode").

``python -m loader.bench.decodecompare --shards DIR --device cuda`` runs, for each of
``--decode opencv,device``, a ``make_loader`` over the shards (all cores as workers unless told)
wrapped in ``DevicePrefetcher``, and times what a training loop would receive: normalised
float batches on the device, the device synchronised at the end of each epoch. The first epoch
warms up (workers start, files are cached, the GPU decoder initialises) and is not timed. It
prints one JSON document: samples/s per decode, the ratio device/opencv, the host's wait per
step (the time the loop spent inside ``next()``, averaged over the timed steps: with nothing to
compute between steps it is the whole step), and ``decode_counts``: the prefetcher's rows by
where they were decoded (``DevicePrefetcher.decode_counts``; all zero for ``opencv``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from loader.dataloader import make_loader, stop_workers
from loader.device.prefetcher import DevicePrefetcher, resolve_device
from loader.jsonsafe import dumps

__all__ = ["compare", "main", "measure"]

log = logging.getLogger("shardfeed.bench")


def measure(
    shards: str,
    *,
    decode: str,
    device: str,
    workers: int,
    batch_size: int,
    image_size: int,
    epochs: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Samples/s through ``DevicePrefetcher`` for one ``decode``, over ``epochs`` timed epochs
    after one untimed warm-up epoch."""
    if epochs < 1:
        raise ValueError(f"expected epochs >= 1, got epochs={epochs}")
    target = resolve_device(device)
    loader = make_loader(
        shards,
        batch_size=batch_size,
        num_workers=workers,
        image_size=image_size,
        seed=seed,
        decode=decode,
    )
    prefetcher = DevicePrefetcher(loader, target)
    samples, seconds, steps, waited = 0, 0.0, 0, 0.0
    try:
        for epoch in range(epochs + 1):
            start = time.perf_counter()
            count, epoch_steps, epoch_wait = 0, 0, 0.0
            batches = iter(prefetcher)
            while True:
                asked = time.perf_counter()
                batch = next(batches, None)
                epoch_wait += time.perf_counter() - asked
                if batch is None:
                    break
                count, epoch_steps = count + len(batch.ids), epoch_steps + 1
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            elapsed = time.perf_counter() - start
            log.info("%s epoch %d: %d samples in %.2f s", decode, epoch, count, elapsed)
            if epoch:
                samples, seconds = samples + count, seconds + elapsed
                steps, waited = steps + epoch_steps, waited + epoch_wait
    finally:
        stop_workers(loader)
    return {
        "decode": decode,
        "samples": samples,
        "seconds": round(seconds, 4),
        "samples_per_s": round(samples / seconds, 1) if seconds else 0.0,
        "host_wait_ms_per_step": round(1000 * waited / steps, 3) if steps else None,
        "decode_counts": prefetcher.decode_counts,
    }


def compare(
    shards: str,
    *,
    device: str,
    workers: int,
    batch_size: int,
    image_size: int,
    epochs: int,
    decodes: Sequence[str] = ("opencv", "device"),
) -> dict[str, Any]:
    """``measure`` for each of ``decodes`` with the same settings, and device/opencv."""
    runs = [
        measure(
            shards,
            decode=decode,
            device=device,
            workers=workers,
            batch_size=batch_size,
            image_size=image_size,
            epochs=epochs,
        )
        for decode in decodes
    ]
    rates = {run["decode"]: run["samples_per_s"] for run in runs}
    doc: dict[str, Any] = {
        "device": str(resolve_device(device)),
        "workers": workers,
        "batch_size": batch_size,
        "image_size": image_size,
        "epochs": epochs,
        "runs": runs,
    }
    if rates.get("opencv") and "device" in rates:
        doc["device_over_opencv"] = round(rates["device"] / rates["opencv"], 3)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loader.bench.decodecompare",
        description="samples/s with decode in the workers against decode on the device",
    )
    p.add_argument("--shards", required=True, help="shard folder, manifest path or URL")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up")
    p.add_argument("--decodes", default="opencv,device", help="comma-separated")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    doc = compare(
        args.shards,
        device=args.device,
        workers=args.workers,
        batch_size=args.batch_size,
        image_size=args.image_size,
        epochs=args.epochs,
        decodes=[d for d in args.decodes.split(",") if d],
    )
    sys.stdout.write(dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
