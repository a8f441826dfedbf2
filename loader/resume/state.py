"""The loader's resume state: what the training loop received, in a form any topology can resume.

A ``LoaderState`` says, for one epoch of one dataset (its ``fingerprint``) and ``seed``:

- ``taken``: every sample the training loop has received this epoch (one bit per global id,
  stored zlib-compressed: ImageNet's 1,281,167 ids are 160 KB as raw bits, and 137 KB
  compressed half-way through an epoch, when the taken ids are a shuffled half of all ids;
  ``python tools/resume_scale.py`` measures it);
- the plan those batches came from: the ``topology`` (world size, workers, batch size, even
  policy, shuffle buffer) and ``base``, the samples taken when that plan was cut (empty for an
  epoch that began from the start);
- ``batches``: per covered rank, how many batches of each worker's plan the loop received.

A loader resumed with the same topology replays its plan and each worker skips the batches it
already handed over, so the same batches follow as in an uninterrupted run. With any other
topology the plan is cut afresh over the samples not taken (``loader.plan.partition``,
``taken``), by the rule of a fresh epoch. Later epochs never depend on the stop. See
docs/architecture.md,
section "Resume".

Rank modes: under ``torch.distributed`` a state is gathered and covers every rank; with ranks
from ``RANK``/``WORLD_SIZE`` only, a state covers its own rank (``ranks``), and a resume takes
the list of every old rank's state (``merge_states``).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from loader.sources import DatasetSource

__all__ = [
    "STATE_KIND",
    "STATE_VERSION",
    "LoaderState",
    "ResumeError",
    "Topology",
    "fingerprint",
    "merge_states",
    "next_worker",
    "pack_bits",
    "resume_point",
    "unpack_bits",
]

STATE_KIND = "shardfeed-loader-state"
STATE_VERSION = 1


class ResumeError(ValueError):
    """A state that cannot resume this loader; the message names what differs and what to do."""


@dataclass(frozen=True)
class Topology:
    """What fixes the batches of an epoch besides the dataset, seed and epoch: equal topologies
    give equal plans. ``num_workers`` counts readers (0 and 1 are the same: one reader)."""

    world_size: int
    num_workers: int
    batch_size: int
    even: str
    shuffle_buffer: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_workers", max(self.num_workers, 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "even": self.even,
            "shuffle_buffer": self.shuffle_buffer,
        }


def fingerprint(source: DatasetSource) -> str:
    """sha256 over each shard's sample count and content hash (or, without one, its file name
    and size): the same dataset wherever it is mounted or served from."""
    digest = hashlib.sha256()
    for shard in source.shards:
        who = shard.sha256 or f"{os.path.basename(shard.url)}:{shard.filesize}"
        digest.update(f"{shard.first_index}:{shard.nsamples}:{who}\n".encode())
    return digest.hexdigest()


def pack_bits(mask: np.ndarray) -> bytes:
    """A bool array as zlib-compressed bits (little bit order)."""
    # Bits, not ids: a half-taken ImageNet epoch is 160 KB of bits against 5 MB of int32 ids.
    return zlib.compress(np.packbits(mask, bitorder="little").tobytes(), 6)


def unpack_bits(blob: object, n: int, what: str) -> np.ndarray:
    """The bool array of length ``n`` that ``pack_bits`` wrote; ResumeError when corrupt."""
    if not isinstance(blob, bytes | bytearray):
        raise ResumeError(f"expected bytes for {what}, got {type(blob).__name__}: corrupt state")
    try:
        raw = zlib.decompress(blob)
    except zlib.error as exc:
        raise ResumeError(
            f"corrupt loader state: {what} does not decompress ({exc}); resume from another "
            "checkpoint"
        ) from None
    if len(raw) != (n + 7) // 8:
        raise ResumeError(
            f"corrupt loader state: expected {(n + 7) // 8} bytes of {what} for {n} samples, "
            f"got {len(raw)}; resume from another checkpoint"
        )
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n, bitorder="little")
    return bits.astype(bool)


@dataclass
class LoaderState:
    """One epoch's resume point (see the module docstring). ``batches[rank][worker]`` counts
    batches received since ``base`` was cut; ``ranks`` are the ranks this state covers."""

    fingerprint: str
    num_samples: int
    seed: int
    epoch: int
    topology: Topology
    ranks: tuple[int, ...]
    batches: dict[int, list[int]]
    base: np.ndarray
    taken: np.ndarray
    version: int = field(default=STATE_VERSION)

    @property
    def complete(self) -> bool:
        return set(self.ranks) == set(range(self.topology.world_size))

    def plan_for(self, topology: Topology) -> tuple[np.ndarray, dict[int, list[int]]]:
        """What a loader of ``topology`` resumes from: the samples its plan leaves out and, per
        rank, how many batches each worker skips. The same topology replays the saved plan
        (``base``) past the batches received; any other cuts the samples not ``taken``."""
        if topology == self.topology:
            return self.base, {r: list(c) for r, c in self.batches.items()}
        return self.taken, {}

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (ints, strings, lists, dicts, bytes): fits ``torch.save``,
        ``torch.distributed.checkpoint`` and ``all_gather_object``."""
        return {
            "kind": STATE_KIND,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "epoch": self.epoch,
            "topology": self.topology.to_dict(),
            "ranks": list(self.ranks),
            "batches": {str(r): list(c) for r, c in sorted(self.batches.items())},
            "samples_taken": int(self.taken.sum()),
            "base": pack_bits(self.base),
            "taken": pack_bits(self.taken),
        }

    @classmethod
    def from_dict(cls, state: object) -> LoaderState:
        """Parse and check a ``to_dict`` result; ResumeError naming what is wrong."""
        if not isinstance(state, Mapping) or state.get("kind") != STATE_KIND:
            got = state.get("kind") if isinstance(state, Mapping) else type(state).__name__
            raise ResumeError(
                f"expected a loader state (kind={STATE_KIND!r}), got {got!r}: pass what "
                "state_dict() returned"
            )
        version = state.get("version")
        if not isinstance(version, int) or version > STATE_VERSION or version < 1:
            raise ResumeError(
                f"expected loader state version <= {STATE_VERSION}, got version={version!r}: "
                "it was written by a newer shardfeed; upgrade shardfeed to resume from it"
            )
        try:
            n = _int(state, "num_samples", 1)
            topo = state["topology"]
            topology = Topology(
                _int(topo, "world_size", 1),
                _int(topo, "num_workers", 0),
                _int(topo, "batch_size", 1),
                str(topo["even"]),
                _int(topo, "shuffle_buffer", 0),
            )
            ranks = tuple(int(r) for r in state["ranks"])
            batches = {int(r): [int(c) for c in v] for r, v in state["batches"].items()}
            parsed = cls(
                fingerprint=str(state["fingerprint"]),
                num_samples=n,
                seed=_int(state, "seed", 0),
                epoch=_int(state, "epoch", 0),
                topology=topology,
                ranks=ranks,
                batches=batches,
                base=unpack_bits(state["base"], n, "base"),
                taken=unpack_bits(state["taken"], n, "taken"),
                version=version,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ResumeError(
                f"corrupt loader state: missing or malformed field {exc}; resume from another "
                "checkpoint"
            ) from None
        if int(parsed.taken.sum()) != state.get("samples_taken"):
            raise ResumeError(
                f"corrupt loader state: samples_taken={state.get('samples_taken')!r} but the "
                f"bitmap holds {int(parsed.taken.sum())}; resume from another checkpoint"
            )
        if bool((parsed.base & ~parsed.taken).any()):
            raise ResumeError("corrupt loader state: base holds samples not taken")
        bad = [r for r in ranks if not 0 <= r < topology.world_size]
        bad += [r for r in batches if r not in ranks]
        if bad or any(len(c) != topology.num_workers for c in batches.values()):
            raise ResumeError(
                f"corrupt loader state: ranks {sorted(ranks)} and batches per rank "
                f"{ {r: len(c) for r, c in batches.items()} } do not fit world_size="
                f"{topology.world_size} num_workers={topology.num_workers}"
            )
        return parsed


def merge_states(states: Sequence[object] | object) -> LoaderState:
    """One state from a state or the list of every old rank's state (per-rank mode).

    All must be of the same dataset, seed, epoch, topology and base; together they must cover
    every rank of the topology that saved them. ResumeError otherwise.
    """
    items = list(states) if isinstance(states, list | tuple) else [states]
    if not items:
        raise ResumeError("expected a loader state or a non-empty list of them, got []")
    parsed = [LoaderState.from_dict(s) for s in items]
    first = parsed[0]
    for other in parsed[1:]:
        for name in ("fingerprint", "num_samples", "seed", "epoch", "topology"):
            if getattr(other, name) != getattr(first, name):
                raise ResumeError(
                    f"expected every rank's state to share {name}, got {name}="
                    f"{getattr(first, name)!r} and {getattr(other, name)!r}: pass states saved "
                    "at the same step"
                )
        if not np.array_equal(other.base, first.base):
            raise ResumeError("expected every rank's state to share its base: pass states "
                              "saved at the same step")  # fmt: skip
    taken = np.logical_or.reduce([s.taken for s in parsed])
    batches: dict[int, list[int]] = {}
    for s in parsed:
        batches.update(s.batches)
    ranks = tuple(sorted({r for s in parsed for r in s.ranks}))
    merged = LoaderState(
        first.fingerprint, first.num_samples, first.seed, first.epoch, first.topology,
        ranks, batches, first.base.copy(), taken,
    )  # fmt: skip
    if not merged.complete:
        missing = sorted(set(range(first.topology.world_size)) - set(ranks))
        raise ResumeError(
            f"expected the states of all {first.topology.world_size} ranks that saved them, "
            f"got ranks {list(ranks)} (missing {missing}): pass the list of every rank's "
            "state_dict(), or save under torch.distributed so each state covers all ranks"
        )
    return merged


def resume_point(
    state: LoaderState | None, topology: Topology, epoch: int, rank: int
) -> tuple[np.ndarray | None, list[int] | None, int]:
    """Where rank ``rank`` of a loader of ``topology`` starts epoch ``epoch``: the samples its
    plan leaves out (``None``: none), how many batches each of its workers skips (``None``: the
    plan is new, nothing to skip), and how many samples were left out (part of the workers'
    shuffle seed, so that a plan cut afresh draws an order of its own). A state of another
    epoch does not apply."""
    if state is None or state.epoch != epoch:
        return None, None, 0
    base, batches = state.plan_for(topology)
    count = int(base.sum())
    return (base if count else None), batches.get(rank), count


def next_worker(batches: Sequence[int], done: Sequence[int], group: int) -> int:
    """The worker whose DataLoader item comes next after each worker ``w`` of ``batches[w]``
    handed over ``done[w]`` batches, in groups of ``group`` after a lone first batch
    (``loader.batch.grouped``). A DataLoader takes items from its workers in turn, passing over
    workers that have run out; a resumed loader whose worker ``i`` plays worker
    ``(i + next_worker(...)) % workers`` therefore hands over the same batches in the same order
    as the run that stopped."""
    items = [_item_sizes(n, group) for n in batches]
    position = [0] * len(batches)
    got = [0] * len(batches)
    while any(position[w] < len(items[w]) for w in range(len(batches))):
        for w in range(len(batches)):
            if position[w] == len(items[w]):
                continue
            size = items[w][position[w]]
            if got[w] + size > done[w]:
                return w
            got[w] += size
            position[w] += 1
    return 0


def _item_sizes(batches: int, group: int) -> list[int]:
    if batches == 0:
        return []
    if group == 1:
        return [1] * batches
    rest = batches - 1
    return [1] + [group] * (rest // group) + ([rest % group] if rest % group else [])


def _int(doc: Any, name: str, low: int) -> int:
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise TypeError(f"{name}={value!r}")
    return int(value)
