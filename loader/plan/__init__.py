"""The epoch plan: which worker of which rank reads which samples, in which order
(docs/architecture.md, "Partition"). Pure arithmetic over shard sizes, seed, epoch and
topology: no process talks to another."""

from loader.plan.epoch import SharedEpoch
from loader.plan.partition import (
    EVEN_POLICIES,
    Segment,
    WorkerPlan,
    plan_epoch,
    plan_rank,
    plan_worker,
)
from loader.plan.ranks import rank_and_world

__all__ = [
    "EVEN_POLICIES",
    "Segment",
    "SharedEpoch",
    "WorkerPlan",
    "plan_epoch",
    "plan_rank",
    "plan_worker",
    "rank_and_world",
]
