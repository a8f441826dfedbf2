"""``ExactEval``: per-sample results of an evaluation pass over any number of ranks, padding
dropped, every planned sample exactly once, certified (docs/architecture.md, "Evaluation").

A rank's loader flags the rows it adds only to even out batch counts (``Batch.padded``);
``update`` keeps those rows out of every result. Nothing is communicated per step: ``update``
only appends the batch's ids, padding flags and values to lists (no device synchronisation
either: the flags are read on the host once, at the end). At the end of the pass one
collective, an all-gather of a short row per rank (row count, id checksum, padded rows and the
column sums of the values), certifies the pass against the epoch's planned ids
(``loader.eval.certificate``) and carries the reductions, so ``totals()`` costs that one
collective; ``gather()`` then moves the rows themselves (ids, then values). A pass that is not
certified raises ``EvalCertificateError`` on every rank, naming how many samples are missing
and how many duplicated (one more collective, on that failure path only), instead of
returning a wrong number.

Invariants: every rank calls ``update`` for each batch its loader yields and then the same
finishing calls (``check``, ``totals``, ``gather``) in the same order; a pass covers one whole
epoch of the loader; the first ``update`` after a finished pass starts the next one. Not
thread-safe: call it from the loop that consumes the loader.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from loader.eval._comm import Comm
from loader.eval.certificate import Certificate, diagnose, planned_ids

if TYPE_CHECKING:
    from loader.dataset import ShardDataset

__all__ = ["EvalTotals", "ExactEval"]

_HEADER = 4  # count, checksum, padded rows, value signature


@dataclass(frozen=True)
class EvalTotals:
    """Reductions over every planned sample of a pass: ``count`` samples, ``padded`` rows left
    out, and ``sums``, the values summed over samples (float64 for floating values, int64
    otherwise; the shape of one row of values)."""

    count: int
    padded: int
    sums: torch.Tensor

    def mean(self) -> torch.Tensor:
        """``sums / count`` (float64)."""
        return self.sums.double() / max(self.count, 1)


@dataclass(frozen=True)
class _Pass:
    """A certified pass: its totals and each rank's row count (what ``gather`` moves)."""

    totals: EvalTotals
    counts: list[int]


class ExactEval:
    """Exact evaluation over ``loader`` (``make_loader``'s, or any DataLoader over a
    ``ShardDataset``, or the dataset itself).

    ``update(batch, values)``: ``values`` is any tensor whose first dimension is the batch
    (predictions, logits, per-sample losses, correct flags), on any device. ``gather()``
    returns, on every rank, ``(ids, values)`` of every sample of the epoch exactly once in
    global id order (``ids`` an int64 CPU tensor). ``totals()`` returns counts and column
    sums without moving the rows; with ``rows=False`` the rows are not even kept (only
    running sums), for outputs too large to hold. ``check()`` certifies the pass alone.
    """

    def __init__(self, loader: Any, *, rows: bool = True) -> None:
        from loader.dataset import ShardDataset

        dataset = getattr(loader, "dataset", loader)
        if not isinstance(dataset, ShardDataset):
            raise TypeError(
                f"expected a loader over a ShardDataset (make_loader's), got "
                f"{type(loader).__name__} over {type(dataset).__name__}"
            )
        self.dataset: ShardDataset = dataset
        self.num_workers = int(getattr(loader, "num_workers", 0) or 0)
        self.rows = bool(rows)
        self.reset()

    def reset(self) -> None:
        """Forget the current pass (the next ``update`` starts a new one)."""
        self._ids: list[torch.Tensor] = []
        self._padded: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._sums: torch.Tensor | None = None
        self._row: tuple[tuple[int, ...], torch.dtype, torch.device] | None = None
        self._epoch: int | None = None
        self._pass: _Pass | None = None
        self._gathered: tuple[torch.Tensor, torch.Tensor] | None = None
        self._kept: torch.Tensor | None = None

    @property
    def batches(self) -> int:
        """Batches given to ``update`` in the current pass."""
        return len(self._ids)

    def update(self, batch: Any, values: torch.Tensor) -> None:
        """Add one batch's ``values`` (first dimension: the batch's rows); its padded rows will
        be left out. ``ValueError`` for values of another length, or of another row shape or
        dtype than the pass's first batch."""
        if self._pass is not None:
            self.reset()
        ids, padded = batch.ids, batch.padded
        if not isinstance(values, torch.Tensor):
            raise ValueError(f"expected values as a tensor, got {type(values).__name__}")
        if values.dim() == 0 or len(values) != len(ids):
            raise ValueError(
                f"expected values with one row per sample of the batch ({len(ids)}), got "
                f"values of shape {tuple(values.shape)}"
            )
        if values.is_complex():
            raise ValueError(f"expected real values, got dtype {values.dtype}")
        row = (tuple(values.shape[1:]), values.dtype, values.device)
        if self._row is None:
            self._row = row
            self._epoch = self.dataset.resume.current_epoch
        elif row[:2] != self._row[:2]:
            raise ValueError(
                f"expected rows of shape {self._row[0]} and dtype {self._row[1]} as in this "
                f"pass's first batch, got shape {row[0]} and dtype {row[1]}"
            )
        values = values.detach()
        flags = padded.detach().to(values.device, torch.bool, non_blocking=True)
        self._ids.append(ids.detach().to("cpu", torch.int64))
        self._padded.append(flags)
        if self.rows:
            self._values.append(values)
            return
        kept = torch.where(flags.view(-1, *([1] * (values.dim() - 1))), 0, values)
        part = kept.sum(0, dtype=_sum_dtype(values.dtype))
        self._sums = part if self._sums is None else self._sums + part

    def check(self) -> int:
        """Certify the pass (one collective); returns the number of samples. Raises
        ``EvalCertificateError`` when a planned sample is missing or repeated."""
        return self._certify().totals.count

    def totals(self) -> EvalTotals:
        """Counts and column sums over every sample of the pass, certified (one collective;
        none after ``gather`` or ``check``)."""
        return self._certify().totals

    def gather(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, values)`` of every sample of the epoch exactly once, in global id order, on
        every rank: ``ids`` int64 on the CPU, ``values`` on the device they were given on.
        Certifies first; then two collectives move the ids and the values."""
        if not self.rows:
            raise ValueError("expected ExactEval(rows=True) to gather values; use totals()")
        if self._gathered is not None:
            return self._gathered
        done = self._certify()
        comm = Comm()
        ids, kept, _ = self._local()
        values = self._kept_values(kept)
        all_ids = comm.gather_varlen(ids, done.counts)
        all_values = comm.gather_varlen(values, done.counts)
        order = torch.argsort(all_ids)
        sorted_ids = all_ids.index_select(0, order)
        planned = self._planned()
        if not np.array_equal(sorted_ids.numpy(), planned):
            counts = np.bincount(sorted_ids.numpy(), minlength=self.dataset.num_samples)
            raise diagnose(counts, planned, comm.world)
        device = self._row[2] if self._row is not None else torch.device("cpu")
        # index_select: advanced indexing of a 2-D tensor took 30 ms for 3,000 rows here
        self._gathered = (sorted_ids, all_values.index_select(0, order).to(device))
        return self._gathered

    def _local(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This rank's kept ids, their row indices in the pass, and its padded row count."""
        ids = torch.cat(self._ids)
        padded = torch.cat(self._padded).cpu()  # the pass's one device-to-host copy of flags
        kept = torch.nonzero(~padded).view(-1)
        return ids.index_select(0, kept), kept, int(padded.sum())

    def _kept_values(self, kept: torch.Tensor) -> torch.Tensor:
        """The pass's values less the padded rows (made once: ``_certify`` and ``gather``)."""
        if self._kept is None:
            values = torch.cat(self._values)
            self._values = [values]
            self._kept = values.index_select(0, kept.to(values.device))
        return self._kept

    def _planned(self) -> np.ndarray:
        epoch = self._epoch if self._epoch is not None else self.dataset.next_epoch
        return planned_ids(self.dataset, epoch, self.num_workers)

    def _certify(self) -> _Pass:
        if self._pass is not None:
            return self._pass
        if self._row is None:
            raise ValueError("expected update() calls before finishing a pass, got none")
        comm = Comm()
        ranks = self.dataset.topology(self.num_workers).world_size
        if ranks != comm.world:
            raise ValueError(
                f"expected torch.distributed initialised with the loader's {ranks} rank(s), got "
                f"world size {comm.world}: init_process_group before finishing the pass"
            )
        ids, kept, padded = self._local()
        shape, dtype, _ = self._row
        if self.rows:
            sums = self._kept_values(kept).sum(0, dtype=_sum_dtype(dtype))
        else:
            sums = self._sums if self._sums is not None else torch.zeros(shape)
        mine = Certificate.of(ids.numpy())
        signature = zlib.crc32(f"{shape}/{dtype}".encode()) & 0x7FFFFFFF
        header = torch.tensor([mine.count, mine.checksum, padded, signature], dtype=torch.int64)
        table = comm.gather_rows(torch.cat([header, _as_int64(sums.cpu().reshape(-1))]))
        if len(set(table[:, 3].tolist())) > 1:
            raise ValueError(
                "expected values of one row shape and dtype on every rank, got different ones"
            )
        planned = self._planned()
        total = Certificate(int(table[:, 0].sum()), int(table[:, 1].sum()))
        if total != Certificate.of(planned):
            local = np.bincount(ids.numpy(), minlength=self.dataset.num_samples)
            counts = comm.sum_counts(torch.from_numpy(local.astype(np.int64)))
            raise diagnose(counts.numpy(), planned, comm.world)
        per_rank = _from_int64(table[:, _HEADER:], sums.dtype).sum(0).reshape(shape)
        totals = EvalTotals(total.count, int(table[:, 2].sum()), per_rank)
        self._pass = _Pass(totals, [int(n) for n in table[:, 0]])
        return self._pass


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype.is_floating_point else torch.int64


def _as_int64(sums: torch.Tensor) -> torch.Tensor:
    """Sums as int64 words for the certificate row (float64 sums by their bits)."""
    return sums.view(torch.int64) if sums.dtype == torch.float64 else sums.to(torch.int64)


def _from_int64(words: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return words.contiguous().view(torch.float64) if dtype == torch.float64 else words
