"""Batch transforms on the device: timm's mixup/cutmix, seeded per batch from (seed, epoch,
first id) through ``DevicePrefetcher`` over real DataLoader workers, the training loop's own
generators untouched, and errors that name the batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from loader.device.prefetcher import DevicePrefetcher
from loader.transforms import (
    ImagesOnly,
    MixupCutmix,
    TensorTransform,
    TransformError,
    cutmix,
    mixup,
)
from tests.loader.transforms.helpers import identity, loader_of, to_float_chw

CLASSES = 3


def rows(batch_size: int = 6, side: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose row ``i`` is the constant ``i``, labels ``i % CLASSES``."""
    images = torch.arange(batch_size, dtype=torch.float32).view(-1, 1, 1, 1)
    return images.expand(batch_size, 3, side, side).clone(), torch.arange(batch_size) % CLASSES


def test_mixup_blends_each_row_with_its_mirror_and_mixes_the_smoothed_targets() -> None:
    images, labels = rows()
    np.random.seed(5)
    mixed, soft = mixup(CLASSES)(images, labels)
    np.random.seed(5)
    lam, use_cutmix = mixup(CLASSES).draw()
    assert not use_cutmix and 0 < lam < 1
    expected = lam * images + (1 - lam) * images.flip(0)
    assert torch.allclose(mixed, expected)
    assert soft.shape == (6, CLASSES)
    assert torch.allclose(soft.sum(1), torch.ones(6))
    off, on = 0.1 / CLASSES, 0.9 + 0.1 / CLASSES
    assert soft[0, 0] == pytest.approx(lam * on + (1 - lam) * off)


def test_cutmix_pastes_a_box_and_its_weight_is_the_share_of_pixels_kept() -> None:
    images, labels = rows(side=32)
    np.random.seed(2)
    mixed, soft = cutmix(CLASSES, label_smoothing=0.0)(images, labels)
    kept = float((mixed[0] == 0).float().mean())
    assert 0 < kept < 1
    # row 0 (class 0) mixed with row 5 (class 2): weight kept on class 0, the rest on class 2
    assert soft[0, 0] == pytest.approx(kept)
    assert soft[0, 2] == pytest.approx(1 - kept)


def test_prob_zero_leaves_images_and_smooths_labels() -> None:
    images, labels = rows()
    same, soft = MixupCutmix(CLASSES, prob=0.0)(images, labels)
    assert torch.equal(same, images)
    assert torch.allclose(soft.max(1).values, torch.full((6,), 0.9 + 0.1 / CLASSES))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_classes": 0}, "num_classes >= 1"),
        ({"num_classes": 3, "mixup_alpha": -1.0}, "mixup_alpha >= 0"),
        ({"num_classes": 3, "prob": 1.5}, "0 <= prob <= 1"),
        ({"num_classes": 3, "label_smoothing": -0.1}, "0 <= label_smoothing <= 1"),
    ],
)
def test_bad_parameters_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MixupCutmix(**options)


def test_mix_refuses_uint8_images_and_labels_of_another_class_count() -> None:
    images, labels = rows()
    with pytest.raises(ValueError, match="expected float images"):
        mixup(CLASSES)(images.to(torch.uint8), labels)
    with pytest.raises(ValueError, match=r"expected labels \[B\] or \[B, 3\]"):
        mixup(CLASSES)(images, torch.zeros(6, 4))


def epoch_of(prefetcher: DevicePrefetcher) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(b.images.clone(), b.labels.clone(), b.ids.clone()) for b in prefetcher]


def test_a_batch_transform_is_seeded_per_batch_and_leaves_the_loops_generators(
    manifest: str,
) -> None:
    def run(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        loader = loader_of(manifest, 2)
        loader.dataset.set_epoch(epoch)
        return epoch_of(DevicePrefetcher(loader, "cpu", batch_transform=mixup(CLASSES)))

    torch.manual_seed(0)
    first = run(1)
    after_first = torch.rand(3)
    torch.manual_seed(0)
    again = run(1)
    assert torch.equal(torch.rand(3), after_first)
    assert len(first) == len(again) > 1
    for (a, la, ia), (b, lb, ib) in zip(first, again, strict=True):
        assert torch.equal(ia, ib) and torch.equal(a, b) and torch.equal(la, lb)
        assert la.shape == (len(ia), CLASSES)
    other = run(2)
    assert any(not torch.equal(x[1], y[1]) for x, y in zip(first, other, strict=True))


def test_float_chw_outputs_pass_unnormalised_and_uint8_chw_ones_are_normalised(
    manifest: str,
) -> None:
    floats = next(iter(DevicePrefetcher(loader_of(manifest, 1, transform=to_float_chw), "cpu")))
    assert floats.images.shape == (4, 3, 16, 16) and float(floats.images.min()) >= 0.0
    hwc = loader_of(manifest, 1, transform=identity)
    chw = loader_of(manifest, 1, transform=TensorTransform(torch.nn.Identity()))
    a = next(iter(DevicePrefetcher(hwc, "cpu")))
    b = next(iter(DevicePrefetcher(chw, "cpu")))
    assert torch.equal(a.images, b.images)


def raises(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    raise RuntimeError("mixing went wrong")


def drops_a_row(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images[1:], labels[1:]


def test_batch_transform_errors_name_the_batch(manifest: str) -> None:
    with pytest.raises(
        TransformError,
        match=r"RuntimeError: mixing went wrong on the batch of 4 samples starting with id "
        r"\d+ \(epoch 0\)",
    ):
        epoch_of(DevicePrefetcher(loader_of(manifest, 0), "cpu", batch_transform=raises))
    with pytest.raises(
        TransformError, match=r"keep the batch's 4 rows, got images shape=\[3, 3, 16, 16\]"
    ):
        epoch_of(DevicePrefetcher(loader_of(manifest, 0), "cpu", batch_transform=drops_a_row))
    with pytest.raises(ValueError, match="expected a callable batch_transform"):
        DevicePrefetcher(loader_of(manifest, 0), "cpu", batch_transform=3)  # type: ignore[arg-type]


def test_a_kornia_batch_augmentation_is_seeded_per_batch(manifest: str) -> None:
    import kornia.augmentation as K

    augment = ImagesOnly(K.AugmentationSequential(K.RandomAffine(degrees=20.0), K.RandomErasing()))

    def run() -> list[torch.Tensor]:
        prefetcher = DevicePrefetcher(loader_of(manifest, 2), "cpu", batch_transform=augment)
        return [b.images.clone() for b in prefetcher]

    first, again = run(), run()
    plain = [b.images for b in DevicePrefetcher(loader_of(manifest, 2), "cpu")]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(first, plain, strict=True))
    assert tuple(first[0].shape) == (4, 3, 16, 16)


def test_a_mix_seeds_batch_transforms_by_source_and_id() -> None:
    """Ids are per source in a mix: two batches that start with the same id of different
    sources draw different randomness; the same (source, id) draws the same."""
    from loader.transforms.batch import run_batch_transform

    def noise(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images + torch.rand(images.shape), labels

    images, labels, ids = torch.zeros(2, 3, 2, 2), torch.zeros(2), torch.tensor([5, 6])
    cpu = torch.device("cpu")

    def run(sources: torch.Tensor | None) -> torch.Tensor:
        out, _ = run_batch_transform(
            noise, images, labels, ids, seed=1, epoch=0, device=cpu, sources=sources
        )
        return out

    web, curated = torch.tensor([0, 0]), torch.tensor([1, 1])
    assert torch.equal(run(web), run(web)) and torch.equal(run(None), run(web))
    assert not torch.equal(run(web), run(curated))
