"""A Lightning job over ``make_loader``, run by ``test_lightning`` as a script
(``python -m tests.loader.eval.lightning_job ...``), since Lightning's ``ddp`` strategy starts
the other ranks by running the same command again.

It trains a tiny linear model for one epoch with a checkpoint every ``CHECKPOINT_EVERY``
steps, validates after the epoch through ``ExactEval`` in ``validation_step``, and writes, per
rank, every training step's ids and the validation figures to ``OUT.rank<N>.json``. With
``--crash-at S`` it raises in step ``S`` (a job stopped mid-epoch); with ``--resume CKPT`` it
goes on from that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from loader import ExactEval, ShardDataset, make_loader

CHECKPOINT_EVERY = 10
IMAGE = 8
CLASSES = 3


class Crash(RuntimeError):
    """The stop the job simulates."""


class Tiny(pl.LightningModule):
    def __init__(self, val: str, out: str, crash_at: int | None) -> None:
        super().__init__()
        self.net = nn.Linear(IMAGE * IMAGE * 3, CLASSES)
        self.val, self.out, self.crash_at = val, out, crash_at
        self.steps: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}
        self.exact: ExactEval | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.flatten(1).float() / 255)

    def training_step(self, batch: Any, index: int) -> torch.Tensor:
        if self.crash_at is not None and self.global_step == self.crash_at:
            raise Crash(f"stopped on purpose at step {self.global_step}")
        real = ~batch.padded
        self.steps.append({"step": self.global_step, "ids": batch.ids[real].tolist()})
        loss = nn.functional.cross_entropy(self(batch.images), batch.labels, reduction="none")
        return (loss * real).sum() / real.sum().clamp(min=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_validation_epoch_start(self) -> None:
        self.exact = ExactEval(self.trainer.val_dataloaders)

    def validation_step(self, batch: Any, index: int) -> None:
        assert self.exact is not None
        correct = self(batch.images).argmax(1) == batch.labels
        self.exact.update(batch, correct.to(torch.int64))

    def on_validation_epoch_end(self) -> None:
        assert self.exact is not None
        totals = self.exact.totals()
        self.figures = {
            "top1": int(totals.sums) / totals.count,
            "count": totals.count,
            "padded": totals.padded,
            "one_process_top1": self._one_process_top1(),
            "val_len": len(self.trainer.val_dataloaders),
        }

    def _one_process_top1(self) -> float:
        """The same model over the whole val set in this process alone (rank 0 of 1)."""
        dataset = ShardDataset(
            self.val, batch_size=7, image_size=IMAGE, train=False, rank=0, world_size=1
        )
        correct = seen = 0
        with torch.no_grad():
            for batch in make_loader(dataset, num_workers=0):
                correct += int((self(batch.images).argmax(1) == batch.labels).sum())
                seen += len(batch.ids)
        return correct / seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt-dir", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--crash-at", type=int)
    parser.add_argument("--resume")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.manual_seed(0)
    # Workers start by "spawn": under ddp the rank processes run threads (gloo, Lightning's
    # observer, queue feeders), and a fork while one of them creates or ends its Python thread
    # state left the child stuck in CPython's after-fork lock (seen once in a 2-rank run).
    spawn = {"num_workers": 1, "image_size": IMAGE, "multiprocessing_context": "spawn"}
    train_loader = make_loader(args.shards, batch_size=4, seed=1, **spawn)
    val_loader = make_loader(args.val, batch_size=5, train=False, **spawn)
    model = Tiny(args.val, args.out, args.crash_at)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[
            ModelCheckpoint(
                dirpath=args.ckpt_dir, every_n_train_steps=CHECKPOINT_EVERY, save_top_k=-1
            )
        ],
    )
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    crashed = False
    try:
        trainer.fit(model, train_loader, val_loader, ckpt_path=args.resume)
    except Crash:
        crashed = True
    doc = {
        "steps": model.steps,
        "val": model.figures,
        "crashed": crashed,
        "train_len": len(train_loader),
    }
    Path(f"{args.out}.rank{trainer.global_rank if not crashed else rank}.json").write_text(
        json.dumps(doc)
    )


if __name__ == "__main__":
    main()
