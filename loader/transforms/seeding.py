"""Augmentation randomness as a function of the data: keys from (seed, epoch, source, id), and
the generators seeded from them (docs/architecture.md, "Transforms").

A sample's key is the 8-byte BLAKE2b digest (read little-endian) of the little-endian uint64s
``(domain, seed, epoch, source, id)``; a batch's key is the same over its first sample's id in
another domain, so a batch transform never replays its first sample's draws. Nothing here
reads the worker count, the rank or the time: a sample gets the same key in every topology,
after a resume and in a rerun, and another one in the next epoch.

``SampleSeeder.seed`` runs before each per-sample call in a worker. It seeds Python's
``random`` (the whole key), NumPy's legacy global generator (its seed is 32 bits: the key's
low 32 bits) and torch's CPU generator (``torch.default_generator``: ``torch.manual_seed``
also queues a seed for every CUDA device, capturing a stack trace each time when CUDA is not
initialised, which costs far more than the seeding itself). The loader's own crop is drawn
from NumPy's global bit generator, so the same call seeds it. The cost is measured by
``shardfeed bench --modes tar-aware,tar-aware-seeded`` and ``python -m
loader.bench.transformcost`` (docs/architecture.md, "Transforms").

``seeded_batch`` does the same around a batch transform in the training process and then puts
back the generators it found, so the training loop's own randomness (dropout, its own flips)
does not depend on whether a batch transform ran.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import blake2b
from typing import Final

import numpy as np
import torch

from loader._checks import check_int

__all__ = ["SampleSeeder", "batch_key", "sample_key", "seeded_batch"]

_SAMPLE: Final = 1
_BATCH: Final = 2
_LIMIT: Final = 1 << 64
_PACK: Final = struct.Struct("<5Q")


def _digest_input(domain: int, seed: int, epoch: int, source: int, gid: int) -> bytes:
    for name, value in (("seed", seed), ("epoch", epoch), ("source", source), ("id", gid)):
        check_int(name, value, 0, _LIMIT)
    return _PACK.pack(domain, seed, epoch, source, gid)


def _digest(domain: int, seed: int, epoch: int, source: int, gid: int) -> bytes:
    return blake2b(_digest_input(domain, seed, epoch, source, gid), digest_size=8).digest()


def sample_key(seed: int, epoch: int, gid: int, source: int = 0) -> int:
    """The 64-bit key of sample ``gid`` of ``source`` in ``epoch`` of a loader seeded ``seed``."""
    return int.from_bytes(_digest(_SAMPLE, seed, epoch, source, gid), "little")


def batch_key(seed: int, epoch: int, first_id: int, source: int = 0) -> int:
    """The 64-bit key of the batch whose first sample is ``first_id`` (of ``source``)."""
    return int.from_bytes(_digest(_BATCH, seed, epoch, source, first_id), "little")


def _seed_globals(key: int) -> None:
    random.seed(key)
    np.random.seed(key & 0xFFFFFFFF)
    torch.default_generator.manual_seed(key)


class SampleSeeder:
    """Seeds the generators before each per-sample call of one epoch of one worker.

    ``seed(gid)`` returns ``crop_rng``, a NumPy ``Generator`` over the bit generator behind
    NumPy's global functions (``np.random.get_bit_generator()``), so seeding those seeds it
    too: the loader's crop and flip are drawn from it first, then the transform's own NumPy
    draws continue the same stream, and the whole augmented sample is a function of the key.
    Not thread-safe (one per worker).
    """

    def __init__(self, seed: int, epoch: int, source: int = 0) -> None:
        self._prefix = _digest_input(_SAMPLE, seed, epoch, source, 0)[:-8]
        bits = np.random.get_bit_generator()  # type: ignore[attr-defined]  # public, not in the stubs
        self.crop_rng = np.random.Generator(bits)

    def seed(self, gid: int) -> np.random.Generator:
        """Seed the generators for sample ``gid``; returns ``crop_rng``."""
        digest = blake2b(self._prefix + gid.to_bytes(8, "little"), digest_size=8).digest()
        key = int.from_bytes(digest, "little")
        random.seed(key)
        np.random.seed(key & 0xFFFFFFFF)
        torch.default_generator.manual_seed(key)
        return self.crop_rng


@contextmanager
def seeded_batch(key: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's generators (the CPU one, and ``device``'s when it is
    a CUDA device) from ``key`` for the block, then restore the states found on entry."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cpu_state = torch.get_rng_state()
    cuda = None
    if device is not None and device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        cuda = torch.cuda.default_generators[index]
    cuda_state = cuda.get_state() if cuda is not None else None
    try:
        _seed_globals(key)
        if cuda is not None:
            cuda.manual_seed(key)
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        if cuda is not None and cuda_state is not None:
            cuda.set_state(cuda_state)
