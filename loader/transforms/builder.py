"""``TransformBatchBuilder``: a batch whose rows are a per-sample transform's outputs
(docs/architecture.md, "Transforms").

It has ``BatchBuilder``'s interface and ownership rule (the arrays of a finished batch belong to
the receiver; the next ``add()`` takes other arrays), and is used only when the dataset has a
transform, so the loader's path without one is unchanged. For each sample it:

1. seeds the generators from the sample's key (``SampleSeeder``: Python's ``random``, NumPy's
   global generator, which the loader's crop is drawn from too, and torch's CPU generator), so
   crop, flip and transform are all a function of (seed, epoch, source, id), whatever the
   worker count, rank count or resume point;
2. decodes the loader's crop (or, for ``FullImage``, the whole image);
3. calls the transform and writes its output into row ``i`` of the batch's array, whose shape
   and dtype are those of the batch's first output.

Outputs that are uint8 ``[S, S, 3]`` (colour transforms, erasing) go into a pooled
shared-memory buffer as the loader's own batches do, and from the second row of a batch on the
sample is decoded straight into its row, so a transform that works in place and returns its
input costs no copy. Any other shape or dtype goes into a fresh shared-memory array of
``[B, *shape]``. The ``rng`` that ``add`` is given is not used: every draw comes from the
sample's key.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import numpy as np
import torch
from torch.utils.data import get_worker_info

from loader.batch import Batch
from loader.decode import decode_full
from loader.transforms.errors import UnplacedTransformError
from loader.transforms.sample import FullImage
from loader.worker.pools import uint8_view

if TYPE_CHECKING:
    from loader.decode import Decoder
    from loader.transforms.sample import SampleTransform
    from loader.transforms.seeding import SampleSeeder
    from loader.worker.pools import ImagePool

__all__ = ["TransformBatchBuilder"]

_TORCH_DTYPES: Final = MappingProxyType(
    {
        np.dtype(numpy_type): torch_type
        for numpy_type, torch_type in (
            (np.bool_, torch.bool),
            (np.uint8, torch.uint8),
            (np.int8, torch.int8),
            (np.int16, torch.int16),
            (np.uint16, torch.uint16),
            (np.int32, torch.int32),
            (np.uint32, torch.uint32),
            (np.int64, torch.int64),
            (np.uint64, torch.uint64),
            (np.float16, torch.float16),
            (np.float32, torch.float32),
            (np.float64, torch.float64),
            (np.complex64, torch.complex64),
            (np.complex128, torch.complex128),
        )
    }
)


def _torch_dtype(dtype: np.dtype, gid: int) -> torch.dtype:
    known = _TORCH_DTYPES.get(dtype)
    if known is None:
        raise UnplacedTransformError(
            f"expected a transform output of a dtype torch can hold, got dtype={dtype}", gid
        )
    return known


def _describe(shape: tuple[int, ...], dtype: torch.dtype) -> str:
    return f"shape={list(shape)} dtype={str(dtype).removeprefix('torch.')}"


class TransformBatchBuilder:
    """Fills one batch of transformed samples; not thread-safe (one per worker).

    ``decoder`` writes the ``[S, S, 3]`` crop (``S = decoder.image_size``, at least 1);
    ``seeder`` seeds each sample; ``pool`` serves uint8 ``[B, S, S, 3]`` batches when
    ``shared_memory`` (``None``: inside a DataLoader worker). ``add`` raises ``DecodeError``
    for bytes that do not decode (the slot stays free: the caller's bad-sample policy applies)
    and ``UnplacedTransformError`` when the transform raises or returns an output unlike the
    batch's first (never a bad sample).
    """

    def __init__(
        self,
        batch_size: int,
        decoder: Decoder,
        transform: SampleTransform,
        seeder: SampleSeeder,
        *,
        pool: ImagePool | None = None,
        shared_memory: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got batch_size={batch_size}")
        side = decoder.image_size
        if side < 1:
            raise ValueError(f"expected a decoder that writes pixels, got decoder={decoder!r}")
        self.batch_size = batch_size
        self.decoder = decoder
        self.transform = transform
        self.seeder = seeder
        self.full_image = isinstance(transform, FullImage)
        self.shared_memory = (
            get_worker_info() is not None if shared_memory is None else shared_memory
        )
        self._pixels = (side, side, 3)
        if pool is not None and pool.nbytes != batch_size * math.prod(self._pixels):
            raise ValueError(
                f"expected a pool of {batch_size * math.prod(self._pixels)}-byte buffers, got "
                f"pool.nbytes={pool.nbytes}"
            )
        self._pool = pool if self.shared_memory else None
        self._scratch = np.empty(self._pixels, dtype=np.uint8)
        self._rows: list[tuple[int, int, bool, int]] = []
        self._images: torch.Tensor | None = None
        self._view: np.ndarray | None = None
        self._in_place = False
        self._signature: tuple[tuple[int, ...], torch.dtype] | None = None
        self._first = -1

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def full(self) -> bool:
        """True when every slot is filled and ``finish()`` must be called before ``add()``."""
        return len(self._rows) == self.batch_size

    def add(
        self,
        data: bytes | memoryview,
        label: int,
        gid: int,
        rng: np.random.Generator,
        padded: bool = False,
    ) -> int:
        """Seed, decode, transform and store sample ``gid``; returns its source byte count."""
        i = len(self._rows)
        if i == self.batch_size:
            raise ValueError(
                f"expected a batch with a free slot, got a full one of {self.batch_size}: "
                "call finish() first"
            )
        crop_rng = self.seeder.seed(gid)
        if self.full_image:
            image = decode_full(data)
            nbytes = memoryview(data).nbytes
        else:
            image = self._view[i] if self._in_place and self._view is not None else self._scratch
            nbytes = self.decoder(data, image, crop_rng)
        try:
            out = self.transform(image)
        except Exception as exc:
            raise UnplacedTransformError(
                f"transform {self.transform!r} raised {type(exc).__name__}: {exc}", gid
            ) from exc
        self._store(i, out, gid, image)
        self._rows.append((label, gid, padded, nbytes))
        return nbytes

    def _store(self, i: int, out: object, gid: int, given: np.ndarray) -> None:
        """Write ``out`` into row ``i``; nothing to write when it is ``given``, the transform's
        input, and that input was row ``i`` already (decoded in place)."""
        if isinstance(out, np.ndarray):
            signature = (out.shape, _torch_dtype(out.dtype, gid))
        elif isinstance(out, torch.Tensor):
            if out.device.type != "cpu":
                raise UnplacedTransformError(
                    f"expected a transform output on the CPU, got device={out.device}", gid
                )
            signature = (tuple(out.shape), out.dtype)
        else:
            raise UnplacedTransformError(
                f"expected the transform to return a NumPy array or a torch tensor, got "
                f"{type(out).__name__}",
                gid,
            )
        images = self._images if i else self._start(signature, gid)
        if images is None or signature != self._signature:
            first = _describe(*self._signature) if self._signature else "none"
            raise UnplacedTransformError(
                f"expected every transform output of a batch to match the batch's first (id "
                f"{self._first}: {first}), got {_describe(*signature)}",
                gid,
            )
        if isinstance(out, torch.Tensor):
            images[i].copy_(out)
        elif self._view is not None:
            if out is not given or given is self._scratch or self.full_image:
                np.copyto(self._view[i], out, casting="no")
        else:
            images[i].copy_(torch.from_numpy(np.ascontiguousarray(out)))

    def _start(self, signature: tuple[tuple[int, ...], torch.dtype], gid: int) -> torch.Tensor:
        """Take the arrays of a new batch whose rows have ``signature``; returns its images."""
        shape, dtype = signature
        full = (self.batch_size, *shape)
        self._signature, self._first = signature, gid
        self._in_place = not self.full_image and shape == self._pixels and dtype == torch.uint8
        nbytes = math.prod(full) * dtype.itemsize
        if self._in_place and self._pool is not None:
            images = uint8_view(self._pool.acquire(), full)
        elif self.shared_memory and nbytes:
            storage = torch.UntypedStorage._new_shared(nbytes)
            strides = [1] * len(full)
            for d in range(len(full) - 2, -1, -1):
                strides[d] = strides[d + 1] * full[d + 1]
            images = torch.empty(0, dtype=dtype).set_(storage, 0, full, strides)
        else:
            images = torch.empty(full, dtype=dtype)
        self._images = images
        self._view = images.numpy() if dtype != torch.bfloat16 else None
        return images

    def repeat(self, slot: int) -> None:
        """Fill the next slot with a copy of filled slot ``slot``, marked as padding."""
        n = len(self._rows)
        if not 0 <= slot < n:
            raise ValueError(f"expected a filled slot in [0, {n}), got slot={slot}")
        if n == self.batch_size:
            raise ValueError(f"expected a batch with a free slot, got a full one of {n}")
        if self._images is None:
            raise ValueError("expected a started batch to repeat a slot of, got none")
        self._images[n].copy_(self._images[slot])
        label, gid, _, _ = self._rows[slot]
        self._rows.append((label, gid, True, 0))

    def finish(self) -> Batch:
        """Hand over the filled rows as a ``Batch``; the next ``add()`` starts new arrays."""
        n = len(self._rows)
        if n == 0 or self._images is None:
            raise ValueError("expected at least one filled slot, got an empty batch")
        images = self._images if n == self.batch_size else self._images[:n]
        columns = torch.from_numpy(np.array(self._rows, dtype=np.int64).T.copy())
        self._rows, self._images, self._view, self._signature = [], None, None, None
        self._in_place = False
        return Batch(images, columns[0], columns[1], columns[2].bool(), columns[3])
