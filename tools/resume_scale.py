"""Resume at ImageNet scale, at the planning level: state size and the time to save, load and
plan; the rest of the epoch checked exactly once. Then, on small generated shards with real
workers, the time to the first batch of a resumed loader against a fresh one.

    .venv/bin/python tools/resume_scale.py [--ranks 64] [--workers 8] [--batch 256]

Prints one JSON document. Not a test: the figures depend on the machine (and its load).
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loader.plan.partition import plan_epoch, plan_rank  # noqa: E402
from loader.plan.shuffle import batch_ids, plan_ids, worker_seed  # noqa: E402
from loader.resume.consumed import Progress  # noqa: E402
from loader.resume.state import LoaderState, Topology, merge_states  # noqa: E402

SAMPLES, SHARDS, SEED, EPOCH = 1_281_167, 1024, 0, 0
log = logging.getLogger("resume_scale")


def _sizes() -> np.ndarray:
    base, extra = divmod(SAMPLES, SHARDS)
    return np.array([base + (i < extra) for i in range(SHARDS)], dtype=np.int64)


def _stop(sizes: np.ndarray, topo: Topology, fraction: float) -> tuple[list[LoaderState], float]:
    """Every rank receives ``fraction`` of its batches, in the DataLoader's worker order; returns
    each rank's state and the mean time of one rank's ``state()``."""
    plans = plan_epoch(
        sizes, seed=SEED, epoch=EPOCH, world_size=topo.world_size,
        num_workers=topo.num_workers, batch_size=topo.batch_size, even=topo.even,
    )  # fmt: skip
    states, took = [], 0.0
    for rank, rank_plans in enumerate(plans):
        progress = Progress(
            sizes, fingerprint="f" * 64, seed=SEED, epoch=EPOCH, rank=rank, topology=topo,
            resume=None,
        )  # fmt: skip
        per_worker = [
            batch_ids(p, topo.batch_size, topo.shuffle_buffer,
                      np.random.default_rng(worker_seed(SEED, EPOCH, rank, w)))
            for w, p in enumerate(rank_plans)
        ]  # fmt: skip
        total = sum(len(b) for b in per_worker)
        k = int(total * fraction)
        for i in range(k):
            w = i % topo.num_workers
            ids, padded = per_worker[w][i // topo.num_workers]
            progress.record(ids, padded)
        start = time.perf_counter()
        states.append(progress.state())
        took += time.perf_counter() - start
    return states, took / len(plans)


def scale(ranks: int, workers: int, batch: int, new_ranks: int, new_workers: int) -> dict[str, Any]:
    sizes = _sizes()
    topo = Topology(ranks, workers, batch, "pad", 1000)
    log.info("simulating a stop half-way through an epoch of %d ranks x %d workers", ranks, workers)
    states, state_s = _stop(sizes, topo, 0.5)

    start = time.perf_counter()
    docs = [s.to_dict() for s in states]
    to_dict_s = (time.perf_counter() - start) / len(states)
    start = time.perf_counter()
    merged = merge_states(docs)
    gathered = merged.to_dict()
    merge_s = time.perf_counter() - start
    blob = pickle.dumps(gathered)
    start = time.perf_counter()
    loaded = merge_states(pickle.loads(blob))
    load_s = time.perf_counter() - start

    new = Topology(new_ranks, new_workers, batch, "pad", 1000)
    base, _ = loaded.plan_for(new)
    start = time.perf_counter()
    rest = plan_epoch(
        sizes, seed=SEED, epoch=EPOCH, world_size=new.world_size, num_workers=new.num_workers,
        batch_size=new.batch_size, even=new.even, taken=base,
    )  # fmt: skip
    plan_all_s = time.perf_counter() - start
    start = time.perf_counter()
    plan_rank(
        sizes, seed=SEED, epoch=EPOCH, rank=new_ranks - 1, world_size=new.world_size,
        num_workers=new.num_workers, batch_size=new.batch_size, even=new.even, taken=base,
    )  # fmt: skip
    plan_rank_s = time.perf_counter() - start

    delivered = np.concatenate([plan_ids(p) for r in rest for p in r])
    taken = np.flatnonzero(loaded.taken)
    assert len(np.intersect1d(delivered, taken)) == 0, "a taken sample is planned again"
    assert len(np.unique(delivered)) == len(delivered), "a sample is planned twice"
    assert len(delivered) + len(taken) == SAMPLES, "samples missing from the rest of the epoch"
    shares = [sum(p.num_samples for p in r) for r in rest]
    assert max(shares) - min(shares) <= 1
    counts = {sum(p.num_batches for p in r) for r in rest}
    assert len(counts) == 1, f"ranks' batch counts differ: {counts}"

    same_base, skips = loaded.plan_for(topo)
    start = time.perf_counter()
    plan_epoch(
        sizes, seed=SEED, epoch=EPOCH, world_size=topo.world_size, num_workers=topo.num_workers,
        batch_size=topo.batch_size, even=topo.even,
    )  # fmt: skip
    replay_plan_s = time.perf_counter() - start
    return {
        "samples": SAMPLES,
        "shards": SHARDS,
        "saved_by": topo.to_dict(),
        "resumed_by": new.to_dict(),
        "samples_taken": int(loaded.taken.sum()),
        "state_bytes": {
            "taken_zlib": len(gathered["taken"]),
            "base_zlib": len(gathered["base"]),
            "rank_state_pickled": len(pickle.dumps(docs[0])),
            "gathered_pickled": len(blob),
            "raw_bitmap": (SAMPLES + 7) // 8,
        },
        "seconds": {
            "rank_state": round(state_s, 4),
            "rank_to_dict": round(to_dict_s, 4),
            "merge_all_ranks": round(merge_s, 4),
            "load": round(load_s, 4),
            "plan_rest_all_ranks": round(plan_all_s, 4),
            "plan_rest_one_rank": round(plan_rank_s, 4),
            "plan_fresh_epoch": round(replay_plan_s, 4),
        },
        "exactly_once": True,
        "replay_skips_rank0": skips[0] if skips else None,
        "replay_base_empty": not bool(same_base.any()),
    }


def first_batch(samples_per_shard: int, shards: int) -> dict[str, Any]:
    """Time from constructing a loader to its first batch: fresh, and resumed half-way with the
    same topology and with another."""
    from loader.dataloader import make_loader
    from tests.loader.helpers import write_test_shards

    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(write_test_shards(Path(tmp), [samples_per_shard] * shards))
        options: dict[str, Any] = {"batch_size": 64, "num_workers": 2, "image_size": 0}
        first = make_loader(manifest, **options)
        it = iter(first)
        half = len(first) // 2
        for _ in range(half):
            next(it)
        state = first.state_dict()
        it.close()
        out: dict[str, Any] = {"samples": samples_per_shard * shards, "stopped_after": half}
        for name, extra, resume in (
            ("fresh", {}, False),
            ("resumed_same_topology", {}, True),
            ("resumed_other_topology", {"num_workers": 1, "batch_size": 48}, True),
        ):
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                loader = make_loader(manifest, **{**options, **extra})
                if resume:
                    loader.load_state_dict(state)
                next(iter(loader))
                runs.append(time.perf_counter() - start)
                del loader
            out[f"{name}_s"] = round(float(np.median(runs)), 4)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--new-ranks", type=int, default=48)
    parser.add_argument("--new-workers", type=int, default=6)
    parser.add_argument("--skip-first-batch", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    doc = {
        "imagenet": scale(args.ranks, args.workers, args.batch, args.new_ranks, args.new_workers)
    }
    if not args.skip_first_batch:
        log.info("time to first batch on generated shards")
        doc["first_batch"] = first_batch(2000, 20)
    sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
