"""``reconcile``: a resume state's batch counts checked against its own plan and bitmap.

A state says, per rank and worker, how many batches the loop received (``batches``) and, per
sample, whether it was received (``taken``). Resumed with the same topology, each worker skips
its counted batches, so a count the bitmap does not back would drop samples (too many) or
deliver them twice (too few). Replaying the saved plan (``base``) gives every worker's samples:

- a count is at most that worker's batches in the plan;
- a worker's counted batches hold ``min(count * batch_size, samples + pads)`` rows, each either
  a sample taken since ``base`` inside its plan or a padded row (a skipped bad sample's filler,
  an evening pad): with the state's ``padded`` counts this is checked exactly. A state without
  them (an older one) is checked by bounds: the samples taken are at most the rows, and at
  least one when the worker counted a batch and has samples;
- every sample taken since ``base`` lies in some worker's plan.

See docs/architecture.md, section "Resume".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loader.plan.partition import plan_epoch
from loader.resume.state import ResumeError

if TYPE_CHECKING:
    import numpy as np

    from loader.resume.state import LoaderState

__all__ = ["reconcile"]


def reconcile(state: LoaderState, sizes: np.ndarray) -> None:
    """Raise ``ResumeError`` naming the rank and worker whose count the bitmap and the plan
    do not back (see the module docstring). ``sizes``: the dataset's shard sample counts."""
    topo = state.topology
    plans = plan_epoch(
        sizes,
        seed=state.seed,
        epoch=state.epoch,
        world_size=topo.world_size,
        num_workers=topo.num_workers,
        batch_size=topo.batch_size,
        even=topo.even,
        taken=state.base if state.base.any() else None,
    )
    new = state.taken & ~state.base
    covered = 0
    for rank, counts in sorted(state.batches.items()):
        for worker, (plan, count) in enumerate(zip(plans[rank], counts, strict=True)):
            got = sum(int(new[s.first_id : s.first_id + len(s)].sum()) for s in plan.segments)
            rows = min(count * topo.batch_size, plan.num_samples + plan.pad)
            if state.padded is not None:
                wrong = got + state.padded[rank][worker] != rows
            else:
                wrong = got > min(rows, plan.num_samples) or bool(
                    count and plan.num_samples and not got
                )
            if count > plan.num_batches or wrong:
                raise ResumeError(
                    f"corrupt loader state: rank {rank} worker {worker} counts {count} batches "
                    f"of its {plan.num_batches} (batch_size={topo.batch_size}), but the bitmap "
                    f"holds {got} of its {plan.num_samples} samples taken since the plan was cut: "
                    "resuming would drop or repeat samples; resume from another checkpoint"
                )
            covered += got
    if covered != int(new.sum()):
        raise ResumeError(
            f"corrupt loader state: {int(new.sum()) - covered} samples taken lie outside every "
            "covered worker's plan; resume from another checkpoint"
        )
