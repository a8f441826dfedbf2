"""Integer quotas: how many samples each source gives each epoch (docs/architecture.md,
"Mixing").

Rules, all exact (rational arithmetic on the numbers as written, so ``0.7`` is 7/10; ties go
to the earlier source):

- a ``samples=`` source takes that many; a ``repeat=`` source ``round_half_up(repeat * size)``;
- the weighted sources share what is left of ``epoch_size`` by the largest-remainder method on
  ``weight / sum(weights) * rest``: each takes the floor of its exact share, and the samples
  still missing go one each to the largest fractional parts;
- ``epoch_size`` defaults to the fixed quotas plus the sizes of the weighted sources, so a mix of
  weights alone takes every sample once per epoch on average;
- ``exhaustion="stop"`` (``stop_epoch``) shortens the epoch to the longest one whose quotas, in
  the same proportions, fit every source once: ``min(N, min_s floor(size_s * N / q_s))``
  positions, with the quotas recomputed for that length.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING

from loader.mix.source import MixError

if TYPE_CHECKING:
    from loader.mix.source import Source

__all__ = ["epoch_quotas", "largest_remainder", "stop_epoch"]


def largest_remainder(shares: Sequence[Fraction | int | float], total: int) -> list[int]:
    """``total`` split in proportion to ``shares`` (non-negative, positive sum): floors of the
    exact parts, then one more each to the largest remainders (earlier index first on ties).
    Each result is the floor or the ceiling of its exact part; the results sum to ``total``."""
    exact = [_exact(s) for s in shares]
    whole = sum(exact, Fraction(0))
    if whole <= 0 or any(s < 0 for s in exact):
        raise ValueError(f"expected non-negative shares with a positive sum, got {list(shares)}")
    parts = [s * total / whole for s in exact]
    floors = [p.numerator // p.denominator for p in parts]
    missing = total - sum(floors)
    ranked = sorted(range(len(parts)), key=lambda i: (-(parts[i] - floors[i]), i))
    for i in ranked[:missing]:
        floors[i] += 1
    return floors


def epoch_quotas(
    sources: Sequence[Source], sizes: Sequence[int], epoch_size: int | None = None
) -> list[int]:
    """Each source's quota per epoch (module rules). ``MixError`` naming the source or value
    when the fixed quotas exceed ``epoch_size``, or when there is nothing to share it by."""
    if len(sources) != len(sizes) or not sources:
        raise MixError(f"expected one size per source, got {len(sources)} sources, {len(sizes)}")
    fixed: dict[int, int] = {}
    for i, (src, size) in enumerate(zip(sources, sizes, strict=True)):
        if src.samples is not None:
            fixed[i] = src.samples
        elif src.repeat is not None:
            fixed[i] = int(_exact(src.repeat) * size + Fraction(1, 2))
    weighted = [i for i in range(len(sources)) if i not in fixed]
    taken = sum(fixed.values())
    if epoch_size is None:
        epoch_size = taken + sum(sizes[i] for i in weighted)
    if isinstance(epoch_size, bool) or not isinstance(epoch_size, int) or epoch_size < 1:
        raise MixError(f"expected an integer epoch_size >= 1, got epoch_size={epoch_size!r}")
    rest = epoch_size - taken
    if rest < 0 or (not weighted and rest):
        detail = ", ".join(f"{sources[i].label}={q}" for i, q in fixed.items())
        raise MixError(
            f"expected epoch_size={epoch_size} to equal the fixed quotas ({detail}, sum {taken})"
            + (" plus a share for the weighted sources" if weighted else "")
            + ": change epoch_size or the repeat=/samples= values"
        )
    quotas = [fixed.get(i, 0) for i in range(len(sources))]
    if weighted:
        weights = [_exact(sources[i].weight or 0) for i in weighted]
        for i, q in zip(weighted, largest_remainder(weights, rest), strict=True):
            quotas[i] = q
    return quotas


def stop_epoch(quotas: Sequence[int], sizes: Sequence[int]) -> tuple[list[int], int | None]:
    """The quotas of an ``exhaustion="stop"`` epoch and the index of the source that ends it
    (``None`` when every quota fits its source)."""
    total = sum(quotas)
    length, first = total, None
    for i, (q, size) in enumerate(zip(quotas, sizes, strict=True)):
        if q > size and size * total // q < length:
            length, first = size * total // q, i
    if first is None:
        return list(quotas), None
    if length < 1:
        raise MixError(
            f"expected every source to hold a sample of a stopped epoch, got source {first} "
            f"with {sizes[first]} samples for a quota of {quotas[first]} in {total}"
        )
    return largest_remainder(list(quotas), length), first


def _exact(value: Fraction | int | float) -> Fraction:
    """``value`` as the fraction its shortest decimal form names (``0.7`` is ``7/10``)."""
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
