"""The order of an epoch's sources: which source each position of the mixed epoch draws from
(docs/architecture.md, "Mixing").

The sources with a non-zero quota are the leaves of a binary tree (``tree_shape``): of up to six
sources, the shape whose largest ``window_bound`` (below) is smallest, trying every shape (945
for six; ties to the first tried); of more, sorted by quota (largest first, then by index) they
are dealt to two halves in the order A B B A A B B A ..., each half split the same way. Each
inner node with children quotas ``a`` and
``b`` (``L = a + b``) lays its ``L`` slots out as a Beatty sequence: slot ``j`` of the node goes
to child ``a`` exactly when ``floor(((j + 1) * a + f) / L) > floor((j * a + f) / L)``, with a
phase ``f`` in ``[0, L)`` drawn from ``(seed, epoch)``. So:

- each source gets exactly its quota (``floor((L * a + f) / L) = a``);
- any ``w`` consecutive slots of a node hold ``w * a / L`` of child ``a``, give or take less than
  one; down the tree the errors add up scaled by the child's share ``r`` of its node
  (``bound = 1 + r * bound_of_node``, 0 at the root), so every window of ``w`` consecutive
  positions holds ``w * q_s / N`` samples of source ``s`` within ``window_bound(s)``, which is
  below 1 for two sources and below 2 for up to four (a batch then holds its rounded share of
  every source, give or take one), below 3 for up to eight; with five or six sources the search
  mostly finds a shape below 2 (not always: quotas 19445, 83572, 14, 35487, 229, 332 give
  2.16 at best), and where it does not, ``interleave_for`` takes the chairman assignment
  (``loader.mix._chairman``: below 2 always, computed position by position);
- a position's source and its draw index within that source (how many of that source's
  positions come before it) are closed formulas: any range is placed without the rest of the
  epoch, in ``O(range * depth)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from loader.mix._chairman import Sequenced

__all__ = ["Interleave", "Shape", "interleave_for", "shape_bound", "tree_shape"]

_PHASE_TAG = 0x6D6978  # keeps the phases' generator apart from the other (seed, epoch) ones
SEARCHED = 6  # up to this many sources, every tree shape is tried

Shape = int | tuple["Shape", "Shape"]
"""A tree over source indices: a leaf is a source, an inner node a pair ``(a, b)``."""


def tree_shape(quotas: Sequence[int]) -> Shape:
    """The tree of the interleave of ``quotas`` (module doc): a pure function of the quotas."""
    live = sorted((i for i, q in enumerate(quotas) if q), key=lambda i: -quotas[i])
    if not live:
        raise ValueError(f"expected quotas >= 0 with a positive sum, got {list(quotas)}")
    if len(live) > SEARCHED:
        return _dealt(live)
    return min(_shapes(tuple(live)), key=lambda shape: shape_bound(shape, quotas))


def shape_bound(shape: Shape, quotas: Sequence[int]) -> float:
    """The largest ``window_bound`` of the tree ``shape`` over ``quotas``."""
    return _worst(shape, quotas, 0.0)


def interleave_for(
    quotas: Sequence[int], seed: int, epoch: int, shape: Shape | None = None
) -> Interleave | Sequenced:
    """The interleave a mix uses: the tree (``shape``, default ``tree_shape(quotas)``) when
    every source's bound is below 2, else the chairman assignment (``loader.mix._chairman``),
    whose bound is below 2 for any number of sources."""
    shape = tree_shape(quotas) if shape is None else shape
    if shape_bound(shape, quotas) < 2:
        return Interleave(quotas, seed, epoch, shape)
    return Sequenced(quotas, seed, epoch)


def _dealt(live: list[int]) -> Shape:
    if len(live) == 1:
        return live[0]
    left = [s for k, s in enumerate(live) if k % 4 in (0, 3)]
    right = [s for k, s in enumerate(live) if k % 4 in (1, 2)]
    return (_dealt(left), _dealt(right))


def _shapes(items: tuple[int, ...]) -> Iterator[Shape]:
    """Every rooted binary tree over ``items`` (the first item always in the left subtree)."""
    if len(items) == 1:
        yield items[0]
        return
    first, rest = items[0], items[1:]
    for mask in range(1 << len(rest)):
        left = (first, *(x for i, x in enumerate(rest) if mask >> i & 1))
        right = tuple(x for i, x in enumerate(rest) if not mask >> i & 1)
        if right:
            for a in _shapes(left):
                for b in _shapes(right):
                    yield (a, b)


def _mass(shape: Shape, quotas: Sequence[int]) -> int:
    return quotas[shape] if isinstance(shape, int) else sum(_mass(c, quotas) for c in shape)


def _worst(shape: Shape, quotas: Sequence[int], bound: float) -> float:
    """The largest window bound over the leaves of ``shape`` (its own bound ``bound``)."""
    if isinstance(shape, int):
        return bound
    whole = _mass(shape, quotas)
    return max(_worst(c, quotas, 1.0 + bound * _mass(c, quotas) / whole) for c in shape)


@dataclass(frozen=True)
class _Node:
    quota: int
    source: int = -1  # a leaf's source; -1 for an inner node
    a: _Node | None = None
    b: _Node | None = None
    phase: int = 0


class Interleave:
    """The interleave of quotas ``quotas`` (one per source, index order) for ``(seed, epoch)``;
    ``shape`` is ``tree_shape(quotas)``, given when known (it does not change with the epoch)."""

    def __init__(
        self, quotas: Sequence[int], seed: int, epoch: int, shape: Shape | None = None
    ) -> None:
        self.quotas = tuple(int(q) for q in quotas)
        self.total = sum(self.quotas)
        if self.total < 1 or min(self.quotas) < 0:
            raise ValueError(f"expected quotas >= 0 with a positive sum, got {list(quotas)}")
        rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence([seed, epoch, _PHASE_TAG]))
        )
        self._root = self._build(tree_shape(self.quotas) if shape is None else shape, rng)
        self._bounds: dict[int, float] = {}
        self._paths: dict[int, list[tuple[int, int, int, bool]]] = {}
        self._measure(self._root, 0.0, [])

    def _build(self, shape: Shape, rng: np.random.Generator) -> _Node:
        if isinstance(shape, int):
            return _Node(self.quotas[shape], source=shape)
        a, b = self._build(shape[0], rng), self._build(shape[1], rng)
        size = a.quota + b.quota
        return _Node(size, a=a, b=b, phase=int(rng.integers(size)))

    def _measure(self, node: _Node, bound: float, path: list[tuple[int, int, int, bool]]) -> None:
        """Record each leaf's window bound and its path: ``(a, L, phase, to_a)`` per node."""
        if node.a is None or node.b is None:
            self._bounds[node.source] = bound
            self._paths[node.source] = path
            return
        for child, to_a in ((node.a, True), (node.b, False)):
            step = (node.a.quota, node.quota, node.phase, to_a)
            self._measure(child, 1.0 + bound * child.quota / node.quota, [*path, step])

    def window_bound(self, source: int) -> float:
        """Any window of ``w`` consecutive positions holds ``w * q / N`` samples of ``source``
        give or take less than this (0 for a lone source, for one with quota 0 nothing)."""
        return self._bounds.get(source, 0.0)

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(source, draw)`` of each position in ``positions`` (int64, each in ``[0, N)``):
        its source (int64) and how many positions of that source come before it."""
        pos = np.asarray(positions, dtype=np.int64)
        source = np.empty(pos.shape, dtype=np.int64)
        draw = np.empty(pos.shape, dtype=np.int64)
        stack: list[tuple[_Node, np.ndarray, np.ndarray]] = [(self._root, np.arange(pos.size), pos)]
        while stack:
            node, where, j = stack.pop()
            if node.a is None or node.b is None:
                source[where] = node.source
                draw[where] = j
                continue
            before = (j * node.a.quota + node.phase) // node.quota
            in_a = (j + 1) * node.a.quota + node.phase >= (before + 1) * node.quota
            stack.append((node.a, where[in_a], before[in_a]))
            stack.append((node.b, where[~in_a], (j - before)[~in_a]))
        return source, draw

    def sources(self, start: int, stop: int) -> np.ndarray:
        """The source (int64) of each position in ``[start, stop)``: ``locate``'s first array
        for a range, computed range by range down the tree (a node's slots of a child in a
        range of its own slots are a range of the child's)."""
        out = np.empty(max(stop - start, 0), dtype=np.int64)
        self._fill(self._root, start, stop, out)
        return out

    def _fill(self, node: _Node, start: int, stop: int, out: np.ndarray) -> None:
        if node.a is None or node.b is None:
            out[:] = node.source
            return
        if stop <= start:
            return
        j = np.arange(start, stop + 1, dtype=np.int64)
        before = (j * node.a.quota + node.phase) // node.quota
        in_a = np.diff(before) > 0
        part = np.empty(int(in_a.sum()), dtype=np.int64)
        self._fill(node.a, int(before[0]), int(before[-1]), part)
        out[in_a] = part
        rest = np.empty(len(out) - len(part), dtype=np.int64)
        self._fill(node.b, start - int(before[0]), stop - int(before[-1]), rest)
        out[~in_a] = rest

    def count_before(self, source: int, position: int) -> int:
        """How many of the first ``position`` positions (``0 <= position <= N``) draw from
        ``source``."""
        path = self._paths.get(source)
        if path is None:
            return 0
        j = int(position)
        for a, size, phase, to_a in path:
            before = (j * a + phase) // size
            j = before if to_a else j - before
        return j
