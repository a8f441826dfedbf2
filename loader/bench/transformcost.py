"""What a per-sample transform costs a worker, measured so that a busy machine's drift cancels
(docs/architecture.md, "Transforms").

``python -m loader.bench.transformcost --shards DIR --image-size 224`` reads ``--samples``
samples of the shards and, sample by sample in one process, times the three steps a worker runs
for each: the loader's decode (``ImageDecoder``, training crop), the per-sample seeding
(``SampleSeeder.seed``) and the CPU recipe of the bench's ``tar-aware-recipe`` mode
(``JitterErase``). Timing each step of the same sample back to back puts the machine's speed
changes into all three alike, where the throughput of the bench modes (``shardfeed bench
--modes tar-aware,tar-aware-seeded,tar-aware-recipe``) also carries them between modes. It
prints one JSON document: microseconds per sample for each step (medians), and
``seed_share``/``recipe_share``, each step's time over the decode's: the throughput a
decode-bound worker gives up to it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from loader.bench.transform_modes import JitterErase
from loader.decode import ImageDecoder
from loader.jsonsafe import dumps
from loader.reader import ShardReader
from loader.sources import resolve_source
from loader.transforms.seeding import SampleSeeder

__all__ = ["main", "measure_costs"]


def measure_costs(shards: str, *, image_size: int = 224, samples: int = 500) -> dict[str, Any]:
    """Per-sample microseconds of decode, seeding and recipe over the first ``samples`` samples
    of ``shards`` (see the module doc)."""
    if samples < 1 or image_size < 1:
        raise ValueError(
            f"expected samples >= 1 and image_size >= 1, got samples={samples} "
            f"image_size={image_size}"
        )
    source = resolve_source(shards)
    decoder = ImageDecoder(image_size, train=True)
    seeder = SampleSeeder(0, 0)
    recipe = JitterErase()
    out = np.empty((image_size, image_size, 3), dtype=np.uint8)
    steps: dict[str, list[float]] = {"decode_us": [], "seed_us": [], "recipe_us": []}
    for shard in source.shards:
        with ShardReader(shard) as reader:
            for sample in reader.read(0, shard.nsamples):
                t0 = time.perf_counter()
                rng = seeder.seed(sample.gid)
                t1 = time.perf_counter()
                decoder(sample.data, out, rng)
                t2 = time.perf_counter()
                recipe(out)
                t3 = time.perf_counter()
                steps["seed_us"].append((t1 - t0) * 1e6)
                steps["decode_us"].append((t2 - t1) * 1e6)
                steps["recipe_us"].append((t3 - t2) * 1e6)
                if len(steps["seed_us"]) == samples:
                    break
        if len(steps["seed_us"]) == samples:
            break
    doc: dict[str, Any] = {k: statistics.median(v) for k, v in steps.items()}
    doc.update(
        samples=len(steps["seed_us"]),
        image_size=image_size,
        seed_share=doc["seed_us"] / doc["decode_us"],
        recipe_share=doc["recipe_us"] / doc["decode_us"],
    )
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loader.bench.transformcost", description=__doc__)
    p.add_argument("--shards", required=True, help="shard folder or manifest")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--samples", type=int, default=500)
    args = p.parse_args(argv)
    doc = measure_costs(args.shards, image_size=args.image_size, samples=args.samples)
    sys.stdout.write(dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
