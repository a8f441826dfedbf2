"""Mixing's property targets, measured once at full size: random plans and random resume points
with a topology change, checked at the planning level for duplicates, missing positions,
quotas and batches off the mix; then the 1.3 million sample plan on 64 ranks x 16 workers
timed, and a rank's resume-state size half-way through it.

    .venv/bin/python tools/mix_check.py [--plans 10000] [--resumes 500] [--shuffle 1000]

Each plan: 1-6 sources of 1-10,000 samples in 1-5 shards, each with a weight, a repeat or a
sample count, an epoch size, "cycle" or "stop", ranks 1-8, workers 0-4, batch sizes 1-256, an
"even" policy and an epoch; everything drawn from ``--seed``, so a run is reproducible. A
batch is off the mix when some source's count in it is outside ``[floor(x) - 1, ceil(x) + 1]``
for its share ``x = rows * quota / epoch_size``. A resume point: every rank of topology A has
received the same number of batches (its workers in turn, each source's rows in the order of a
``--shuffle``-slot buffer, as a training loader's worker hands them over), each rank's state is
saved as a ``Progress`` records it, the states merged and the rest cut for topology B. Prints
one JSON document; the times depend on the machine's load.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import pickle
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loader.bench.mix import PLAN_BATCH, PLAN_RANKS, PLAN_SAMPLES, PLAN_WORKERS, time_plan  # noqa: E402
from loader.mix.interleave import Interleave  # noqa: E402
from loader.mix.plan import MixPlan  # noqa: E402
from loader.mix.quotas import epoch_quotas  # noqa: E402
from loader.mix.source import MixError, Source  # noqa: E402
from loader.plan.partition import WorkerPlan, plan_epoch  # noqa: E402
from loader.plan.shuffle import emission_order  # noqa: E402
from loader.resume.consumed import Progress  # noqa: E402
from loader.resume.state import Topology, merge_states  # noqa: E402
from tests.loader.mix.helpers import positions_of, window_error  # noqa: E402

log = logging.getLogger("mix_check")
SHUFFLE = 1_000  # the loader's default shuffle buffer


def draw_mix(rng: np.random.Generator) -> tuple[list[list[int]], list[Source], int | None]:
    """Shard sizes, sources and epoch size (``None``: the default) of one random mix."""
    shards, sources = [], []
    for i in range(int(rng.integers(1, 7))):
        size = int(np.exp(rng.uniform(0, math.log(10_000)))) if rng.random() < 0.8 else 10_000
        cuts = np.sort(rng.integers(0, size + 1, int(rng.integers(0, 5))))
        shards.append(np.diff(np.concatenate([[0], cuts, [size]])).tolist())
        kind = rng.choice(["weight", "weight", "weight", "repeat", "samples"])
        if kind == "weight":
            spec: dict[str, Any] = {"weight": round(float(rng.uniform(0.01, 10)), 2)}
        elif kind == "repeat":
            spec = {"repeat": float(rng.choice([0.25, 0.5, 1, 2, 4, 1.7]))}
        else:
            spec = {"samples": int(rng.integers(0, 2 * size + 1))}
        sources.append(Source(f"s{i}", name=f"s{i}", **spec))
    weighted = [sum(s) for s, src in zip(shards, sources, strict=True) if src.weight is not None]
    epoch_size = None
    if weighted and rng.random() < 0.5:
        fixed = sum(epoch_quotas(sources, [sum(s) for s in shards], None)) - sum(weighted)
        epoch_size = max(1, fixed + int(rng.integers(0, 2 * sum(weighted) + 1)))
    return shards, sources, epoch_size


def quota_errors(
    sources: list[Source], sizes: list[int], epoch_size: int, quotas: list[int]
) -> int:
    """Sources whose quota breaks the rules: fixed quotas as given, weighted ones the floor or
    the ceiling of their exact share, the sum the epoch size."""
    bad = int(sum(quotas) != epoch_size)
    fixed = {i: src.samples if src.samples is not None else
             int(Fraction(repr(float(src.repeat))) * sizes[i] + Fraction(1, 2))
             for i, src in enumerate(sources) if src.weight is None}  # fmt: skip
    weights = {i: Fraction(repr(float(src.weight))) for i, src in enumerate(sources)
               if src.weight is not None}  # fmt: skip
    rest = epoch_size - sum(fixed.values())
    for i, q in enumerate(quotas):
        if i in fixed:
            bad += q != fixed[i]
        else:
            share = weights[i] / sum(weights.values()) * rest
            bad += not math.floor(share) <= q <= math.ceil(share)
    return bad


def batch_bound(
    plan: MixPlan, epoch: int, workers: list[WorkerPlan], batch: int
) -> tuple[int, int, float]:
    """Batches, batches off the mix (module doc) and the largest ``|count - x|`` of the real
    rows of ``workers``' batches (a worker's slots in order, ``batch`` at a time)."""
    inter, n, s = plan.interleave(epoch), plan.epoch_size, len(plan.quotas)
    share = np.asarray(plan.quotas, dtype=np.float64) / n
    total = off = 0
    worst = 0.0
    for w in workers:
        runs = [inter.sources(g.first_id, g.first_id + len(g)) for g in w.segments]
        slots = np.concatenate(runs) if runs else np.zeros(0, np.int64)
        if not len(slots):
            continue
        index = np.arange(len(slots)) // batch
        counts = np.bincount(index * s + slots, minlength=(index[-1] + 1) * s).reshape(-1, s)
        x = counts.sum(axis=1, keepdims=True) * share
        low, high = np.floor(x) - 1, np.ceil(x) + 1
        off += int(((counts < low) | (counts > high)).any(axis=1).sum())
        total += len(counts)
        worst = max(worst, float(np.abs(counts - x).max()))
    return total, off, worst


def check_plan(rng: np.random.Generator, totals: Counter[str], worst: dict[str, float]) -> None:
    """One random plan (module doc), its counts added to ``totals``."""
    shards, sources, epoch_size = draw_mix(rng)
    sizes = [sum(s) for s in shards]
    seed, epoch = int(rng.integers(0, 2**31)), int(rng.integers(0, 5))
    try:
        quotas = epoch_quotas(sources, sizes, epoch_size)
        exhaustion = "stop" if rng.random() < 0.2 else "cycle"
        plan = MixPlan(shards, quotas, seed=seed, exhaustion=exhaustion)
    except MixError:
        totals["refused"] += 1  # fixed quotas past epoch_size, an empty mix: an error named
        return
    totals["plans"] += 1
    totals["quota_errors"] += quota_errors(sources, sizes, sum(quotas), quotas)
    n = plan.epoch_size
    world = int(rng.integers(1, min(8, n) + 1))
    workers, batch = int(rng.integers(0, 5)), int(np.exp(rng.uniform(0, math.log(256))))
    even = str(rng.choice(["pad", "none", "drop"]))
    plans = plan_epoch([n], seed=seed, epoch=epoch, world_size=world, num_workers=workers,
                       batch_size=batch, even=even)  # fmt: skip
    positions, _, drops = positions_of(plans)
    unique = len(np.unique(positions))
    totals["duplicates"] += len(positions) - unique
    totals["missing"] += n - drops - unique
    totals["dropped_reported"] += drops
    source, ids = plan.lookup(epoch, np.arange(n))
    for s, passes in enumerate(plan.passes):
        start = plan.start(s, epoch)
        want = np.sort(passes.ids(np.arange(start, start + plan.quotas[s])))
        got = np.sort(ids[source == s])
        totals["source_quota_errors"] += len(got) != plan.quotas[s] or not np.array_equal(got, want)
        if exhaustion == "stop":
            totals["stop_repeats"] += len(got) - len(np.unique(got))
        if plan.quotas[s]:
            inter = plan.interleave(epoch)
            error = window_error(inter.sources(0, n), s, plan.quotas[s])
            totals["windows_over_bound"] += error >= inter.window_bound(s) + 1e-9
            worst["window_error"] = max(worst.get("window_error", 0.0), error)
    if even != "none":
        totals["unequal_rank_batches"] += len({sum(w.num_batches for w in r) for r in plans}) > 1
    batches, off, dev = batch_bound(plan, epoch, [w for r in plans for w in r], batch)
    totals["batches"] += batches
    totals["batches_off_mix"] += off
    worst["batch_deviation"] = max(worst.get("batch_deviation", 0.0), dev)
    totals["chairman_interleaves"] += not isinstance(plan.interleave(epoch), Interleave)


def stop_states(plan: MixPlan, seed: int, epoch: int, topo: Topology, steps: int,
                rng: np.random.Generator, shuffle: int,
                ranks: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The state of each rank (of the first ``ranks``; ``None``: all) after its loop received
    ``steps`` batches (module doc), with the ``"mix"`` entry a mixed loader adds."""
    sizes = np.asarray([plan.epoch_size])
    inter = plan.interleave(epoch)
    states = []
    plans = plan_epoch(
        sizes,
        seed=seed,
        epoch=epoch,
        world_size=topo.world_size,
        num_workers=topo.num_workers,
        batch_size=topo.batch_size,
        even=topo.even,
    )
    for rank, workers in enumerate(plans[:ranks]):  # fmt: skip
        progress = Progress(sizes, fingerprint="f" * 64, seed=seed, epoch=epoch, rank=rank,
                            topology=topo, resume=None)  # fmt: skip
        queues = [_batches(w, inter, topo.batch_size, rng, shuffle) for w in workers]
        taken = 0
        while taken < steps and any(queues):
            for queue in queues:
                if queue and taken < steps:
                    progress.record(*queue.pop(0))
                    taken += 1
        state = progress.state().to_dict()
        state["mix"] = {"exhaustion": plan.exhaustion, "epoch": epoch,
                        "sources": plan.describe(epoch)}  # fmt: skip
        states.append(state)
    return states


def _batches(w: WorkerPlan, inter: Any, batch: int, rng: np.random.Generator,
             shuffle: int) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """A worker's batches as (positions, padded): each slot keeps its source, and each source's
    positions fill its slots in the order of a shuffle buffer."""
    empty = np.zeros(0, np.int64)
    positions = np.concatenate([np.arange(g.first_id, g.first_id + len(g)) for g in w.segments]
                               or [empty])  # fmt: skip
    slots = np.concatenate([inter.sources(g.first_id, g.first_id + len(g)) for g in w.segments]
                           or [empty])  # fmt: skip
    rows = positions.copy()
    for s in np.unique(slots).tolist():
        mine = positions[slots == s]
        rows[slots == s] = mine[np.fromiter(emission_order(len(mine), shuffle, rng), np.int64)]
    rows = np.concatenate([rows, np.asarray(w.pad_ids, np.int64)])
    padded = np.arange(len(rows)) >= len(positions)
    return [(rows[i : i + batch], padded[i : i + batch]) for i in range(0, len(rows), batch)]


def check_resume(
    rng: np.random.Generator, totals: Counter[str], worst: dict[str, float], shuffle: int = SHUFFLE
) -> None:
    """One random resume point with a topology change (module doc), counted into ``totals``."""
    while True:
        shards, sources, epoch_size = draw_mix(rng)
        try:
            quotas = epoch_quotas(sources, [sum(s) for s in shards], epoch_size)
            plan = MixPlan(shards, quotas, seed=int(rng.integers(0, 2**31)),
                           exhaustion="stop" if rng.random() < 0.2 else "cycle")  # fmt: skip
            break
        except MixError:
            continue
    n, seed, epoch = plan.epoch_size, plan.seed, int(rng.integers(0, 5))

    def topology() -> Topology:
        return Topology(int(rng.integers(1, min(8, n) + 1)), int(rng.integers(0, 5)),
                        int(np.exp(rng.uniform(0, math.log(256)))),
                        str(rng.choice(["pad", "none"])), shuffle)  # fmt: skip

    before, after = topology(), topology()
    while after == before:
        after = topology()
    most = -(-n // (before.world_size * before.batch_size)) + before.num_workers
    steps = int(rng.integers(0, most + 1))
    states = stop_states(plan, seed, epoch, before, steps, rng, shuffle)
    merged = merge_states(states)
    base, _ = merged.plan_for(after)  # another topology: the rest is cut afresh
    taken = np.flatnonzero(merged.taken)
    rest = plan_epoch([n], seed=seed, epoch=epoch, world_size=after.world_size,
                      num_workers=after.num_workers, batch_size=after.batch_size,
                      even=after.even, taken=base if base.any() else None)  # fmt: skip
    positions, _, _ = positions_of(rest)
    both = np.concatenate([positions, taken])
    unique = len(np.unique(both))
    totals["resumes"] += 1
    totals["samples_taken_before"] += len(taken)
    totals["duplicates"] += len(both) - unique
    totals["missing"] += n - unique
    source, ids = plan.lookup(epoch, np.arange(n))
    rows = np.sort(source[both] * (1 << 32) + ids[both])
    totals["row_errors"] += not np.array_equal(rows, np.sort(source * (1 << 32) + ids))
    if after.even == "pad":
        totals["unequal_rank_batches"] += len({sum(w.num_batches for w in r) for r in rest}) > 1
    batches, off, dev = batch_bound(plan, epoch, [w for r in rest for w in r], after.batch_size)
    totals["batches"] += batches
    totals["batches_off_mix"] += off
    worst["batch_deviation"] = max(worst.get("batch_deviation", 0.0), dev)


def scale(seed: int) -> dict[str, Any]:
    """``time_plan``'s figures (``plan_ms``: the whole 1.3 million sample plan, best of three;
    ``worker_ms``: one worker's; ``state_bytes``: the gathered state every rank holds under
    ``torch.distributed`` half-way through the epoch) and rank 0's own state at that point
    (``rank_state_bytes``, pickled, with its ``"mix"`` entry), as ``Progress`` records it."""
    figures = time_plan(seed)
    plan = MixPlan([[1_000] * (n // 1_000) for n in PLAN_SAMPLES], list(PLAN_SAMPLES), seed=seed)
    topo = Topology(PLAN_RANKS, PLAN_WORKERS, PLAN_BATCH, "pad", SHUFFLE)
    half = -(-plan.epoch_size // (PLAN_RANKS * PLAN_BATCH)) // 2
    rng = np.random.default_rng(seed)
    (state,) = stop_states(plan, seed, 1, topo, half, rng, SHUFFLE, ranks=1)
    figures["rank_state_bytes"] = len(pickle.dumps(state))
    figures["rank_state_samples_taken"] = state["samples_taken"]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=10_000)
    parser.add_argument("--resumes", type=int, default=500)
    parser.add_argument("--shuffle", type=int, default=SHUFFLE, help="resume points' buffer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-scale", action="store_true", help="skip the 1.3 million plan")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rng = np.random.default_rng(args.seed)
    doc: dict[str, Any] = {"seed": args.seed, "shuffle": args.shuffle}
    resume = functools.partial(check_resume, shuffle=args.shuffle)
    for name, count, check in (("plans", args.plans, check_plan),
                               ("resumes", args.resumes, resume)):  # fmt: skip
        totals: Counter[str] = Counter()
        worst: dict[str, float] = {}
        start = time.perf_counter()
        for i in range(count):
            check(rng, totals, worst)
            if (i + 1) % max(1, count // 10) == 0:
                log.info("%s: %d of %d checked", name, i + 1, count)
        doc[name] = {**dict(sorted(totals.items())), **{k: round(v, 4) for k, v in worst.items()},
                     "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    if not args.no_scale:
        log.info("timing the 1.3 million sample plan on %d x %d", PLAN_RANKS, PLAN_WORKERS)
        doc["scale"] = scale(args.seed)
    sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
