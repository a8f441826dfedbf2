"""Delivery duplicates: how often each id arrived this epoch (docs/architecture.md, "Tracker").

One saturating ``np.uint8`` counter per sample (about 1.3 MB for ImageNet). Per epoch the
tracker reports samples delivered (not counting padding), unique ids seen, duplicates
(``delivered - unique``), missing ids (``num_samples - unique``) and padded samples.
``delivered``, ``padded`` and ``unique`` are exact integers kept beside the counters, so
saturation at 255 only caps the per-id counts, never the totals.

A tracker is not thread-safe: feed it from one thread (the training loop). ``state_dict`` and
``load_state_dict`` carry it across a stop (docs/architecture.md, section "Resume"), so the
report of an epoch resumed mid-way covers both sides of the stop.

Across ranks (docs/architecture.md, "Tracker"): each rank counts what it received. When
``torch.distributed`` is initialised, ``end_epoch()`` returns the counts over every rank, and
``all_ranks()`` is the one place that merges them: one all-reduce of the per-id counters plus
the exact totals, so a sample two ranks both received counts as a duplicate and a rank's
"missing" is no longer the other ranks' share. Every rank must call it at the same point. The
returned ``EpochCounts.ranks`` says which view it is (1: this rank's); ``counts()`` and
``rank_history`` keep this rank's own view.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from loader._checks import check_int

if TYPE_CHECKING:
    import torch

__all__ = [
    "DuplicateTracker",
    "EpochCounts",
    "SeenError",
    "pack_seen",
    "read_packed_seen",
    "unpack_seen",
]

_SATURATION = 255


class SeenError(ValueError):
    """A seen-id bitmap that does not decode to ``num_samples`` bits; the message says why."""


def pack_seen(seen: np.ndarray) -> bytes:
    """The wire form of a boolean per-id array: bits packed (id ``i`` is bit ``i % 8``, counted
    from the most significant, of byte ``i // 8``), then zlib. A rank reads whole shards, so
    its bitmap is long runs and compresses to a few hundred bytes."""
    return zlib.compress(np.packbits(np.asarray(seen, dtype=bool)).tobytes(), 6)


def unpack_seen(blob: bytes, num_samples: int) -> np.ndarray:
    """``pack_seen``'s result back to a boolean array of ``num_samples``."""
    return np.unpackbits(read_packed_seen(blob, num_samples), count=num_samples).astype(bool)


def read_packed_seen(blob: bytes, num_samples: int) -> np.ndarray:
    """``pack_seen``'s result decompressed, still packed (``uint8``, 8 ids a byte): what a
    union of many ranks' bitmaps needs. The decompression stops at the bitmap's size, so a
    small blob never grows into a large allocation. ``SeenError`` for a blob that is corrupt,
    short, long or sets bits past ``num_samples``."""
    check_int("num_samples", num_samples, 0)
    size = (num_samples + 7) // 8
    inflate = zlib.decompressobj()
    try:
        packed = inflate.decompress(blob, size)
        rest = b"" if inflate.eof else inflate.decompress(inflate.unconsumed_tail, 1)
    except zlib.error as exc:
        raise SeenError(
            f"expected a zlib-compressed id bitmap, got a corrupt one ({exc})"
        ) from None
    if len(packed) != size or rest or not inflate.eof or inflate.unused_data:
        longer = " or more" if rest or inflate.unused_data else ""
        raise SeenError(
            f"expected an id bitmap of {size} bytes for num_samples={num_samples}, got "
            f"{len(packed)}{longer} bytes" + ("" if inflate.eof else " (cut short)")
        )
    bits = np.frombuffer(packed, dtype=np.uint8)
    spare = size * 8 - num_samples
    if spare and bits[-1] & ((1 << spare) - 1):
        raise SeenError(f"expected no id at or above num_samples={num_samples}, got one")
    return bits


@dataclass(frozen=True)
class EpochCounts:
    """Delivery counts of one epoch (or of the epoch so far)."""

    epoch: int
    delivered: int
    unique: int
    duplicates: int
    missing: int
    padded: int
    ranks: int = 1
    """How many ranks' deliveries the counts cover: 1 for one rank's view."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class DuplicateTracker:
    """Counts deliveries of each global id in ``[0, num_samples)`` per epoch.

    Use: ``start_epoch(e)``, ``update(ids, padded)`` per batch, ``end_epoch()``. The tracker
    starts with epoch 0 open. After ``end_epoch`` the epoch is closed: ``update``, ``merge`` and
    ``end_epoch`` raise RuntimeError until the next ``start_epoch``. ``history`` holds what
    ``end_epoch`` returned (over all ranks when merged), ``rank_history`` this rank's counts.
    """

    def __init__(self, num_samples: int) -> None:
        self.num_samples = check_int("num_samples", num_samples, 0)
        self._counters = np.zeros(self.num_samples, dtype=np.uint8)
        self.history: list[EpochCounts] = []
        self.rank_history: list[EpochCounts] = []
        self._epoch = 0
        self._open = True
        self._delivered = 0
        self._unique = 0
        self._padded = 0
        self._ranks = 1

    @property
    def counters(self) -> np.ndarray:
        """Read-only view of the per-id delivery counts of the current epoch (uint8, capped)."""
        view = self._counters.view()
        view.flags.writeable = False
        return view

    @property
    def epoch(self) -> int:
        return self._epoch

    def start_epoch(self, epoch: int) -> None:
        """Open ``epoch`` with all counters at zero; an epoch not ended is discarded unrecorded."""
        self._epoch = check_int("epoch", epoch, 0)
        self._counters[:] = 0
        self._open = True
        self._delivered = 0
        self._unique = 0
        self._padded = 0

    def update(
        self,
        ids: np.ndarray | torch.Tensor,
        padded: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Count one batch of global ids; samples where ``padded`` is true count as padding only.

        Raises ValueError for a non-integer id array, a mask of another length, or an id
        outside ``[0, num_samples)``; the counts are unchanged when it raises.
        """
        self._require_open("update")
        flat = _to_numpy(ids, "ids").ravel()
        if flat.size and flat.dtype.kind not in "iu":
            raise ValueError(f"expected integer ids, got dtype {flat.dtype}")
        if flat.size:
            self._check_range(flat)
        if padded is not None:
            mask = _to_numpy(padded, "padded").ravel()
            if mask.shape != flat.shape:
                raise ValueError(
                    f"expected one padded flag per id ({flat.size}), got {mask.size} flags"
                )
            if mask.size and mask.dtype.kind not in "biu":
                raise ValueError(f"expected a boolean padded mask, got dtype {mask.dtype}")
            mask = mask.astype(bool, copy=False)
            self._padded += int(np.count_nonzero(mask))
            flat = flat[~mask]
        if flat.size == 0:
            return
        self._delivered += int(flat.size)
        seen, times = np.unique(flat, return_counts=True)
        before = self._counters[seen]
        self._unique += int(np.count_nonzero(before == 0))
        self._counters[seen] = np.minimum(before + times, _SATURATION)

    def merge(self, other_counts: np.ndarray | torch.Tensor, *, padded: int = 0) -> None:
        """Add another rank's per-id counter array (and its ``padded`` total) into this epoch.

        ``other_counts`` must have one non-negative integer count per sample. Its sum is added
        to ``delivered``, so counts the other rank saturated at 255 add only 255.
        """
        self._require_open("merge")
        other = _to_numpy(other_counts, "other_counts")
        if other.shape != self._counters.shape:
            raise ValueError(
                f"expected other_counts of shape {self._counters.shape}, got shape {other.shape}"
            )
        if other.size and other.dtype.kind not in "iu":
            raise ValueError(f"expected integer other_counts, got dtype {other.dtype}")
        if other.size and other.min() < 0:
            raise ValueError(f"expected other_counts >= 0, got minimum {int(other.min())}")
        check_int("padded", padded, 0)
        total = np.minimum(self._counters.astype(np.int64) + other, _SATURATION)
        self._counters[:] = total
        self._delivered += int(other.sum(dtype=np.int64))
        self._padded += int(padded)
        self._unique = int(np.count_nonzero(self._counters))

    def seen(self) -> np.ndarray:
        """A copy of this epoch's ids delivered at least once, one bool per id (see
        ``pack_seen`` for the wire form)."""
        return self._counters > 0

    def counts(self) -> EpochCounts:
        """Counts of the current epoch so far (this rank's, unless this tracker came from
        ``all_ranks()``)."""
        return EpochCounts(
            epoch=self._epoch,
            delivered=self._delivered,
            unique=self._unique,
            duplicates=self._delivered - self._unique,
            missing=self.num_samples - self._unique,
            padded=self._padded,
            ranks=self._ranks,
        )

    def end_epoch(self, merge: bool | None = None) -> EpochCounts:
        """Close the epoch, append its counts to ``history`` and return them: over every rank
        (``all_ranks()``, one collective) when ``merge`` is true or, by default, when
        ``torch.distributed`` is initialised with more than one rank; else this rank's."""
        self._require_open("end_epoch")
        own = self.counts()
        if merge is None:
            merge = _world() > 1
        result = self.all_ranks().counts() if merge else own
        self.history.append(result)
        self.rank_history.append(own)
        self._open = False
        return result

    def all_ranks(self) -> DuplicateTracker:
        """A new tracker holding this epoch's counts over every rank (this one, unmerged, when
        ``torch.distributed`` is not initialised): one all-reduce of the per-id counters and
        the exact ``delivered`` and ``padded`` totals. Collective: every rank calls it at the
        same point."""
        world = _world()
        merged = DuplicateTracker(self.num_samples)
        merged.start_epoch(self._epoch)
        merged.history = list(self.history)
        merged.rank_history = list(self.rank_history)
        if world == 1:
            merged.merge(self._counters, padded=self._padded)
            merged._delivered, merged._ranks = self._delivered, 1
            return merged
        import torch
        import torch.distributed as dist

        flat = np.empty(self.num_samples + 2, dtype=np.int64)
        flat[:-2], flat[-2], flat[-1] = self._counters, self._delivered, self._padded
        summed = torch.from_numpy(flat)
        if dist.get_backend() == "nccl":
            summed = summed.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(summed)
        total = summed.cpu().numpy()
        merged._counters[:] = np.minimum(total[:-2], _SATURATION)
        merged._unique = int(np.count_nonzero(total[:-2]))
        merged._delivered, merged._padded = int(total[-2]), int(total[-1])
        merged._ranks = world
        return merged

    def state_dict(self) -> dict[str, Any]:
        """The counts of the current epoch and the history, as plain types (counters as
        zlib-compressed bytes)."""
        return {
            "num_samples": self.num_samples,
            "epoch": self._epoch,
            "open": self._open,
            "delivered": self._delivered,
            "unique": self._unique,
            "padded": self._padded,
            "counters": zlib.compress(self._counters.tobytes(), 6),
            "history": [h.to_dict() for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s result; ValueError when it is of another number of
        samples or corrupt (the tracker is unchanged then)."""
        try:
            if state["num_samples"] != self.num_samples:
                raise ValueError(
                    f"expected a tracker state of num_samples={self.num_samples}, got "
                    f"num_samples={state['num_samples']}: load the state of this dataset"
                )
            counters = np.frombuffer(zlib.decompress(state["counters"]), dtype=np.uint8)
            history = [EpochCounts(**h) for h in state["history"]]
            totals = [int(state[k]) for k in ("epoch", "delivered", "unique", "padded")]
        except (KeyError, TypeError, zlib.error) as exc:
            raise ValueError(
                f"corrupt tracker state ({type(exc).__name__}: {exc}); resume from another "
                "checkpoint"
            ) from None
        if counters.shape != self._counters.shape or totals[2] != np.count_nonzero(counters):
            raise ValueError("corrupt tracker state: counters do not match the totals")
        self._counters[:] = counters
        self._epoch, self._delivered, self._unique, self._padded = totals
        self._open = bool(state["open"])
        self.history = history

    def _require_open(self, action: str) -> None:
        if not self._open:
            raise RuntimeError(
                f"epoch {self._epoch} has ended; call start_epoch() before {action}()"
            )

    def _check_range(self, flat: np.ndarray) -> None:
        low, high = flat.min(), flat.max()
        if low >= 0 and high < self.num_samples:
            return
        bad = low if low < 0 else high
        raise ValueError(f"expected ids in [0, {self.num_samples}), got id={int(bad)}")


def _world() -> int:
    """The process group's size, 1 when ``torch.distributed`` is not initialised."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _to_numpy(values: Any, name: str) -> np.ndarray:
    """``values`` as a NumPy array; torch tensors are detached and moved to the CPU."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == object:
        raise ValueError(f"expected a numeric array for {name}, got {type(values).__name__}")
    return array
