"""Which rank this process is, and of how many: the one resolver every part of the loader uses
(docs/architecture.md, "Partition").

Order: explicit values, else an initialised ``torch.distributed`` process group, else the
``RANK``/``WORLD_SIZE`` variables torchrun sets (both), else ``(0, 1)``. Worker identity is not
resolved here: it comes from ``torch.utils.data.get_worker_info()`` inside the worker.
"""

from __future__ import annotations

import os

import torch

from loader._checks import check_int

__all__ = ["rank_and_world"]


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``, checked: ``0 <= rank < world_size``.

    Give both or neither; a bad pair, or non-integer ``RANK``/``WORLD_SIZE``, is a
    ``ValueError`` naming the values.
    """
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ValueError(
                f"expected rank and world_size both given or both None, got rank={rank!r} "
                f"world_size={world_size!r}"
            )
        return _checked(rank, world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if env_rank is None or env_world is None:
        return 0, 1
    try:
        return _checked(int(env_rank), int(env_world))
    except ValueError:
        raise ValueError(
            f"expected integers 0 <= RANK < WORLD_SIZE in the environment, got "
            f"RANK={env_rank!r} WORLD_SIZE={env_world!r}: unset them or fix them"
        ) from None


def _checked(rank: int, world_size: int) -> tuple[int, int]:
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0, world_size)
    return int(rank), int(world_size)
