"""Training checkpoints: model, optimiser, loader and tracker state in one file per save.

A checkpoint is ``DIR/ckpt-<step>.pt`` (step zero-padded to 9 digits, so names sort by step).
It is written to a temporary name in ``DIR``, flushed and fsync-ed, then renamed, and the folder
is fsync-ed: a reader sees a whole file or none, even when the job is killed while saving. Only
one process (rank 0) writes; the loader state in it is the gathered, global one
(docs/architecture.md, section "Resume"). ``latest_checkpoint`` picks the newest complete file;
temporary files of a killed save are ignored. ``CheckpointSteps`` is the training loop's side:
it counts steps, logs each step's ids and saves every N steps.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from loader.jsonsafe import dumps
from loader.tracker import DuplicateTracker

if TYPE_CHECKING:
    from loader.train.loop import TrainOptions

__all__ = [
    "CHECKPOINT_KIND",
    "CheckpointError",
    "CheckpointSteps",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_KIND = "shardfeed-train-checkpoint"
CHECKPOINT_VERSION = 1
log = logging.getLogger("shardfeed.train")
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def checkpoint_path(directory: str | os.PathLike[str], step: int) -> Path:
    return Path(directory) / f"ckpt-{step:09d}.pt"


def save_checkpoint(directory: str | os.PathLike[str], step: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus kind, version and step) as the checkpoint of ``step``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    doc = {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION, "step": step, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            torch.save(doc, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint of the highest step in ``directory``; ``None`` when there is none
    (or no such folder)."""
    folder = Path(directory)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's contents; ``CheckpointError`` for a truncated, corrupt or foreign file
    or one written by a newer shardfeed."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:120]
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({reason}): delete it to resume from "
            "the one before"
        ) from None
    if not isinstance(doc, dict) or doc.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(
            f"expected a shardfeed training checkpoint in {path}, got another file: move it out "
            "of the checkpoint folder"
        )
    if not isinstance(doc.get("version"), int) or doc["version"] > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"expected checkpoint version <= {CHECKPOINT_VERSION} in {path}, got "
            f"version={doc.get('version')!r}: upgrade shardfeed to resume from it"
        )
    return doc


class CheckpointSteps:
    """Counts optimiser steps across epochs, logs each step's ids (``log_json``) and saves a
    checkpoint every ``checkpoint_every`` steps. Saving is collective: every rank calls
    ``after_step`` at the same step (the ``pad`` policy gives every rank the same count)."""

    def __init__(
        self,
        options: TrainOptions,
        rank: int,
        world: int,
        loader: Any,
        tracker: DuplicateTracker,
    ) -> None:
        self.options, self.rank, self.world = options, rank, world
        self.loader, self.tracker = loader, tracker
        self.model: nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.step = 0
        self.resumed_at: int | None = None
        self._log = None
        if options.log_json:
            path = Path(f"{options.log_json}.rank{rank}.steps.jsonl")
            self._log = path.open("a", encoding="utf-8", buffering=1)

    def restore(self, checkpoint: dict[str, Any]) -> int:
        """Load the loader and tracker state; returns the epoch to go on with."""
        self.loader.load_state_dict(checkpoint["loader"])
        epoch = int(checkpoint["loader"]["epoch"])
        if self.rank == 0:
            self.tracker.load_state_dict(checkpoint["tracker"])
        else:
            self.tracker.start_epoch(epoch)
        self.step = int(checkpoint["step"])
        self.resumed_at = self.step
        return epoch

    def after_step(self, epoch: int, ids: np.ndarray) -> None:
        self.step += 1
        if self._log is not None:
            line = {"step": self.step, "epoch": epoch, "world_size": self.world}
            self._log.write(dumps({**line, "ids": ids.tolist()}) + "\n")
        every = self.options.checkpoint_every
        if every and self.step % every == 0:
            self.save()

    def save(self) -> None:
        loader_state = self.loader.state_dict()
        tracker_state = self._global_tracker()
        if self.model is None or self.opt is None:
            raise RuntimeError("checkpoint before the model and optimiser were set")
        if self.rank == 0 and self.options.checkpoint_dir:
            path = save_checkpoint(
                self.options.checkpoint_dir,
                self.step,
                {
                    "world_size": self.world,
                    "model": self.model.state_dict(),
                    "optimizer": self.opt.state_dict(),
                    "loader": loader_state,
                    "tracker": tracker_state,
                },
            )
            log.info("checkpoint %s", path)
        if self.world > 1:
            dist.barrier()

    def _global_tracker(self) -> dict[str, Any]:
        if self.world == 1:
            return self.tracker.state_dict()
        counts = self.tracker.counts()
        counters = torch.from_numpy(self.tracker.counters.astype(np.int32))
        padded = torch.tensor([counts.padded], dtype=torch.int64)
        dist.all_reduce(counters)
        dist.all_reduce(padded)
        merged = DuplicateTracker(self.tracker.num_samples)
        merged.start_epoch(self.tracker.epoch)
        merged.merge(counters.numpy(), padded=int(padded))
        return merged.state_dict()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
