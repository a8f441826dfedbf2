"""A ``torchvision.transforms.v2`` pipeline as its documentation writes it, in the workers, and
v2's ``CutMix`` as a batch transform on the device.

PyPI's torchvision wheels are linked against CUDA and do not import with the CPU torch of the
development machines, so this module skips there; ``tools/device_check.sh`` runs it on a GPU
machine, where torchvision imports."""

from __future__ import annotations

import pytest
import torch

from loader.device.prefetcher import DevicePrefetcher
from loader.transforms import TensorTransform
from tests.loader.transforms.helpers import TOTAL, loader_of, pixels_by_id, same

v2 = pytest.importorskip(
    "torchvision.transforms.v2", reason="torchvision does not import here (CPU torch)"
)


def recipe() -> TensorTransform:
    return TensorTransform(
        v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
                v2.ToDtype(torch.float32, scale=True),
                v2.RandomErasing(p=0.5),
            ]
        )
    )


def test_a_v2_pipeline_gives_the_same_pixels_for_1_and_3_workers(manifest: str) -> None:
    one = pixels_by_id(loader_of(manifest, 1, transform=recipe()), epoch=0)
    three = pixels_by_id(loader_of(manifest, 3, transform=recipe()), epoch=0)
    assert len(one) == TOTAL and same(one, three)
    assert {(tuple(t.shape), t.dtype) for t in one.values()} == {((3, 16, 16), torch.float32)}


def test_v2_cutmix_runs_on_the_device_seeded_per_batch(manifest: str) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def run() -> list[torch.Tensor]:
        loader = loader_of(manifest, 2, transform=recipe())
        prefetcher = DevicePrefetcher(loader, device, batch_transform=v2.CutMix(num_classes=3))
        out = []
        for batch in prefetcher:
            assert batch.images.device.type == device and batch.labels.shape[1] == 3
            out.append(batch.labels.cpu())
        return out

    first, again = run(), run()
    assert len(first) > 1
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
