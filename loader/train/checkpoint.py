"""Training checkpoints: model, optimiser, loader and tracker state in one file per save.

A checkpoint is ``DIR/ckpt-<step>.pt`` (step zero-padded to 9 digits, so names sort by step).
It is written to a temporary name in ``DIR``, flushed and fsync-ed, then renamed, and the folder
is fsync-ed: a reader sees a whole file or none, even when the job is killed while saving. Only
one process (rank 0) writes; the loader state in it is the gathered, global one
(docs/architecture.md, section "Resume"). ``latest_checkpoint`` picks the newest complete file;
temporary files of a killed save are ignored; ``prune_checkpoints`` keeps the newest few.
``CheckpointSteps`` is the training loop's side: it counts steps, logs each step's ids and
saves every N steps, keeping the newest ``keep``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from loader.jsonsafe import dumps
from loader.tracker import DuplicateTracker

__all__ = [
    "CHECKPOINT_KIND",
    "KEEP_CHECKPOINTS",
    "CheckpointError",
    "CheckpointSteps",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

CHECKPOINT_KIND = "shardfeed-train-checkpoint"
CHECKPOINT_VERSION = 1
KEEP_CHECKPOINTS = 3
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


def prune_checkpoints(directory: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints in ``directory`` (``keep`` 0: delete
    none); returns the deleted paths, oldest first."""
    if keep < 0:
        raise ValueError(f"expected --keep-checkpoints >= 0, got --keep-checkpoints={keep}")
    folder = Path(directory)
    if not keep or not folder.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    old = [p for _, p in found[: max(len(found) - keep, 0)]]
    for path in old:
        path.unlink(missing_ok=True)
    return old


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
    """Counts optimiser steps across epochs, logs each step's ids (``log_json``: to
    ``<log_json>.rank<N>.steps.jsonl``) and saves a checkpoint into ``directory`` every
    ``every`` steps (0: never), keeping the newest ``keep`` (0: all). Saving is collective:
    every rank calls ``after_step`` at the same step (the ``pad`` policy gives every rank the
    same count)."""

    def __init__(
        self,
        *,
        directory: str | None,
        every: int,
        keep: int = KEEP_CHECKPOINTS,
        log_json: str | None,
        rank: int,
        world: int,
        loader: Any,
        tracker: DuplicateTracker,
    ) -> None:
        self.directory, self.every, self.keep = directory, every, keep
        self.rank, self.world = rank, world
        self.loader, self.tracker = loader, tracker
        self.model: nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.step = 0
        self.resumed_at: int | None = None
        self._log = None
        if log_json:
            path = Path(f"{log_json}.rank{rank}.steps.jsonl")
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
        if self.every and self.step % self.every == 0:
            self.save()

    def save(self) -> None:
        loader_state = self.loader.state_dict()
        tracker_state = self.tracker.all_ranks().state_dict()
        if self.model is None or self.opt is None:
            raise RuntimeError("checkpoint before the model and optimiser were set")
        if self.rank == 0 and self.directory:
            path = save_checkpoint(
                self.directory,
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
            for old in prune_checkpoints(self.directory, self.keep):
                log.info("removed old checkpoint %s (--keep-checkpoints %d)", old, self.keep)
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
