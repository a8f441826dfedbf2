"""``MixedBatch``: a batch of a mix, whose rows also say their source and epoch position
(docs/architecture.md, "Mixing").

``ids`` are ids within each row's source (``source``, an index into the loader's list of
sources); ``position`` is the row's position in the mixed epoch, what resume counts. A
``MixedBatch`` travels between processes as its ``Batch`` part does (``loader.batch``: pooled
image buffers by handle, the columns by value) plus one ``[2, B]`` array for the two columns.
"""

from __future__ import annotations

from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch._utils import ExceptionWrapper

from loader.batch import Batch, reduce_for_transfer

if TYPE_CHECKING:
    from collections.abc import Callable

    from loader.batch import BatchBuilder

__all__ = ["MixedBatch", "MixedBuilder"]


class MixedBatch(NamedTuple):
    """``Batch``'s fields, then ``source`` (int64 index into the sources) and ``position``
    (int64 position in the mixed epoch) of each row."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    padded: torch.Tensor
    nbytes: torch.Tensor
    source: torch.Tensor
    position: torch.Tensor


def _reduce(batch: MixedBatch) -> tuple[Any, ...]:
    rebuild, args = reduce_for_transfer(Batch(*batch[:5]))
    tags = np.stack([np.asarray(batch.source, np.int64), np.asarray(batch.position, np.int64)])
    return (_rebuild, (rebuild, args, tags))


def _rebuild(
    rebuild: Callable[..., Batch | ExceptionWrapper], args: tuple[Any, ...], tags: np.ndarray
) -> MixedBatch | ExceptionWrapper:
    batch = rebuild(*args)
    if isinstance(batch, ExceptionWrapper):
        return batch
    columns = torch.from_numpy(tags)
    return MixedBatch(*batch, columns[0], columns[1])


ForkingPickler.register(MixedBatch, _reduce)


class MixedBuilder:
    """A ``BatchBuilder`` that also records each row's source and position: ``add`` both, or
    (a hot loop) ``builder.add`` then ``tags.append((source, position))``, re-reading ``tags``
    after each ``finish``."""

    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder
        self.tags: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.builder)

    @property
    def full(self) -> bool:
        return self.builder.full

    def add(
        self,
        data: bytes | memoryview,
        label: int,
        gid: int,
        rng: np.random.Generator,
        tag: tuple[int, int],
        padded: bool = False,
    ) -> None:
        """``BatchBuilder.add`` with the row's ``(source, position)``; on a ``DecodeError``
        nothing is recorded."""
        self.builder.add(data, label, gid, rng, padded=padded)
        self.tags.append(tag)

    def repeat(self, slot: int) -> None:
        """``BatchBuilder.repeat``: a padded copy of row ``slot``, of its source and position."""
        self.builder.repeat(slot)
        self.tags.append(self.tags[slot])

    def finish(self) -> MixedBatch:
        batch = self.builder.finish()
        tags = torch.tensor(self.tags, dtype=torch.int64).reshape(-1, 2).T.contiguous()
        self.tags = []
        return MixedBatch(*batch, tags[0], tags[1])
