"""Training checkpoints: model, optimiser, loader and tracker state in one file per save.

A checkpoint is ``DIR/ckpt-<step>.pt`` (step zero-padded to 9 digits, so names sort by step).
It is written to a temporary name in ``DIR``, flushed and fsync-ed, then renamed, and the folder
is fsync-ed: a reader sees a whole file or none, even when the job is killed while saving. Only
one process (rank 0) writes; the loader state in it is the gathered, global one
(docs/architecture.md, section "Resume"). ``latest_checkpoint`` picks the newest complete file;
temporary files of a killed save are ignored.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_KIND",
    "CheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_KIND = "shardfeed-train-checkpoint"
CHECKPOINT_VERSION = 1
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
