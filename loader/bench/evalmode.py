"""The ``tar-aware-eval`` bench mode: ``tar-aware``'s loader (in eval order, ``train=False``)
driven as an evaluation loop drives it, through ``loader.eval.ExactEval``.

Per batch a stand-in model output (each row's prediction and label) goes to
``ExactEval.update``; at the end of the pass ``gather()`` and ``totals()`` run. The time spent
inside those calls (CPU time of the loop's thread) is the evaluation's overhead; each epoch
reports it as ``eval_s`` and as ``eval_overhead``, a fraction of the whole pass (from
``iter()`` to the gathered result). With no model in the pass that fraction is an upper bound
of what a real evaluation pays, whose pass also runs the model (docs/architecture.md,
"Evaluation").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from loader.batch import Batch
from loader.bench.setup import BuiltMode, ModeSetup, storage_label
from loader.dataloader import ClosingDataLoader, make_loader
from loader.eval import ExactEval

__all__ = ["EvalPass", "tar_aware_eval_mode"]


class EvalPass:
    """Iterates ``loader`` once per ``iter()``, feeding every batch to an ``ExactEval`` and
        finishing the pass at its end; ``epoch_figures()`` gives the last pass's timings: the CPU
    time of this thread inside ``ExactEval`` (so that a busy machine's preemptions do not count
    as the evaluation's), over the wall time of the pass. Other
        attributes are the loader's (``num_workers``, ``dataset``)."""

    def __init__(self, loader: ClosingDataLoader) -> None:
        self.loader = loader
        self.eval = ExactEval(loader)
        self._eval_s = 0.0
        self._pass_s = 0.0
        self.samples = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["loader"], name)

    def __iter__(self) -> Iterator[Batch]:
        start = time.perf_counter()
        spent = 0.0
        for batch in self.loader:
            values = torch.stack([batch.labels, batch.labels], 1)
            t0 = time.thread_time()
            self.eval.update(batch, values)
            spent += time.thread_time() - t0
            yield batch
        t0 = time.thread_time()
        self.eval.gather()
        self.samples = self.eval.totals().count
        spent += time.thread_time() - t0
        self._eval_s, self._pass_s = spent, time.perf_counter() - start

    def epoch_figures(self) -> dict[str, float]:
        """``eval_s`` (seconds inside ``ExactEval``) and ``eval_overhead`` (its share of the
        pass) of the last pass."""
        return {
            "eval_s": self._eval_s,
            "eval_overhead": self._eval_s / self._pass_s if self._pass_s else 0.0,
        }


def tar_aware_eval_mode(setup: ModeSetup) -> BuiltMode:
    loader = make_loader(
        setup.source,
        num_workers=setup.workers,
        batch_size=setup.batch_size,
        image_size=setup.image_size,
        decode=setup.decode,
        seed=setup.seed,
        latency_ms=setup.latency_ms,
        train=False,
    )
    storage = storage_label(setup, "shard open/request") + ", eval order, ExactEval"
    return BuiltMode(EvalPass(loader), setup.source.num_samples, storage)
