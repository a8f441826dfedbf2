"""The loader's resume state: what the training loop received, in a form any topology can resume.

A ``LoaderState`` says, for one epoch of one dataset (its ``fingerprint``) and ``seed``:

- ``taken``: every sample the training loop has received this epoch (one bit per global id,
  stored zlib-compressed: ImageNet's 1,281,167 ids are 160 KB as raw bits, and 137 KB
  compressed half-way through an epoch, when the taken ids are a shuffled half of all ids;
  ``python tools/resume_scale.py`` measures it);
- the plan those batches came from: the ``topology`` (world size, workers, batch size, even
  policy, shuffle buffer) and ``base``, the samples taken when that plan was cut (empty for an
  epoch that began from the start);
- ``batches``: per covered rank, how many batches of each worker's plan the loop received,
  and ``padded``: how many padded rows those batches held (bad samples skipped and evening
  pads), so that the counts can be checked against the bitmap exactly
  (``loader.resume.reconcile``; a state without ``padded`` is checked by bounds only).

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

from loader.plan.partition import EVEN_POLICIES

if TYPE_CHECKING:
    from loader.sources import DatasetSource

__all__ = [
    "MAX_RANKS",
    "MAX_WORKERS",
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
MAX_RANKS = 1 << 20  # the most ranks a state may name
MAX_WORKERS = 1 << 12  # the most DataLoader workers per rank a state may name


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
    """The bool array of length ``n`` that ``pack_bits`` wrote; ResumeError when corrupt. It
    never inflates more than the ``(n + 7) // 8`` bytes ``n`` bits need (plus one, to tell a
    longer stream), however the blob was crafted."""
    if not isinstance(blob, bytes | bytearray):
        raise ResumeError(f"expected bytes for {what}, got {type(blob).__name__}: corrupt state")
    want = (n + 7) // 8
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(bytes(blob), want + 1)
    except zlib.error as exc:
        raise ResumeError(
            f"corrupt loader state: {what} does not decompress ({exc}); resume from another "
            "checkpoint"
        ) from None
    if len(raw) > want:
        problem = f"inflates to more than the {want} bytes of {n} samples"
    elif not inflate.eof:
        problem = "does not decompress (the stream is cut short)"
    elif len(raw) != want or inflate.unused_data:
        problem = f"holds {len(raw)} bytes and {len(inflate.unused_data)} more, expected {want}"
    else:
        problem = ""
    if problem:
        raise ResumeError(f"corrupt loader state: {what} {problem}; resume from another checkpoint")
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
    padded: dict[int, list[int]] | None = None

    @property
    def complete(self) -> bool:
        ranks = set(self.ranks)
        world = self.topology.world_size
        return len(ranks) == world and all(0 <= r < world for r in ranks)

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
            **(
                {}
                if self.padded is None
                else {"padded": {str(r): list(c) for r, c in sorted(self.padded.items())}}
            ),
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
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version:
            raise ResumeError(
                f"corrupt loader state: expected version as an int >= 1, got {version!r:.80}"
            )
        if version > STATE_VERSION:
            raise ResumeError(
                f"expected loader state version <= {STATE_VERSION}, got version={version!r}: "
                "it was written by a newer shardfeed; upgrade shardfeed to resume from it"
            )
        n = _int(state, "num_samples", 1)
        topology = _topology(_field(state, "topology", Mapping))
        world = topology.world_size
        ranks = tuple(_int_value(r, "ranks[]", 0, world - 1) for r in _field(state, "ranks", list))
        if len(set(ranks)) != len(ranks):
            raise ResumeError(f"corrupt loader state: ranks={list(ranks)} repeats a rank")
        batches = _per_rank(_field(state, "batches", Mapping), "batches", ranks, topology)
        padded = None
        if state.get("padded") is not None:
            padded = _per_rank(_field(state, "padded", Mapping), "padded", ranks, topology)
        parsed = cls(
            fingerprint=_field(state, "fingerprint", str),
            num_samples=n,
            seed=_int(state, "seed", 0),
            epoch=_int(state, "epoch", 0),
            topology=topology,
            ranks=ranks,
            batches=batches,
            base=unpack_bits(state.get("base"), n, "base"),
            taken=unpack_bits(state.get("taken"), n, "taken"),
            version=version,
            padded=padded,
        )
        taken = _int(state, "samples_taken", 0)
        if int(parsed.taken.sum()) != taken:
            raise ResumeError(
                f"corrupt loader state: samples_taken={taken} but the bitmap holds "
                f"{int(parsed.taken.sum())}; resume from another checkpoint"
            )
        if bool((parsed.base & ~parsed.taken).any()):
            raise ResumeError("corrupt loader state: base holds samples not taken")
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
    padded: dict[int, list[int]] | None = {}
    for s in parsed:
        batches.update(s.batches)
        if s.padded is None or padded is None:
            padded = None
        else:
            padded.update(s.padded)
    ranks = tuple(sorted({r for s in parsed for r in s.ranks}))
    merged = LoaderState(
        first.fingerprint, first.num_samples, first.seed, first.epoch, first.topology,
        ranks, batches, first.base.copy(), taken, padded=padded,
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


def _field(doc: Mapping[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind):
        raise ResumeError(
            f"corrupt loader state: expected {name} as {kind.__name__}, got "
            f"{type(value).__name__} {value!r:.80}; resume from another checkpoint"
        )
    return value


def _int_value(value: object, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; a bool is not an int here."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        wanted = f"an int >= {low}"
    elif high is not None and value > high:
        wanted = f"an int in {low}..{high}"
    else:
        return int(value)
    raise ResumeError(
        f"corrupt loader state: expected {name} {wanted}, got {value!r:.80}; resume from "
        "another checkpoint"
    )


def _int(doc: Mapping[str, Any], name: str, low: int) -> int:
    return _int_value(doc.get(name), name, low)


def _per_rank(
    doc: Mapping[str, Any], name: str, ranks: tuple[int, ...], topology: Topology
) -> dict[int, list[int]]:
    """``{"rank": [count per worker]}`` with one list per rank in ``ranks``."""
    out: dict[int, list[int]] = {}
    for key, counts in doc.items():
        if not isinstance(key, str) or not (key.isascii() and key.isdigit()):
            raise ResumeError(f"corrupt loader state: expected rank keys in {name}, got {key!r}")
        if not isinstance(counts, list) or len(counts) != topology.num_workers:
            raise ResumeError(
                f"corrupt loader state: expected {name}[{key!r}] as a list of "
                f"{topology.num_workers} counts (num_workers), got {counts!r:.80}"
            )
        out[int(key)] = [_int_value(c, f"{name}[{key!r}][]", 0) for c in counts]
    if sorted(out) != sorted(ranks):
        raise ResumeError(
            f"corrupt loader state: {name} for ranks {sorted(out)}, expected one list per rank "
            f"in ranks={sorted(ranks)}"
        )
    return out


def _topology(doc: Mapping[str, Any]) -> Topology:
    even = doc.get("even")
    if even not in EVEN_POLICIES:
        raise ResumeError(f"corrupt loader state: expected topology.even in {EVEN_POLICIES}, "
                          f"got {even!r:.80}")  # fmt: skip
    return Topology(
        _int_value(doc.get("world_size"), "world_size", 1, MAX_RANKS),
        _int_value(doc.get("num_workers"), "num_workers", 0, MAX_WORKERS),
        _int(doc, "batch_size", 1),
        str(even),
        _int(doc, "shuffle_buffer", 0),
    )
