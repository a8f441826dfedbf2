"""Bad transforms and bad settings: a transform that raises reaches the main process naming the
shard, member and original exception under every bad-sample policy; outputs that do not stack
name the sample and both shapes; a per-sample transform is refused where it cannot run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loader.badsamples import BadSampleError
from loader.dataloader import make_loader
from loader.dataset import ShardDataset
from loader.transforms import FullImage, TransformError
from tests.helpers import png_bomb
from tests.loader.helpers import jpeg_bytes, write_test_shards
from tests.loader.transforms.helpers import boom, identity, jitter, loader_of


def shape_by_parity(image: np.ndarray) -> np.ndarray:
    """A crop whose side depends on a seeded draw: batches mix two shapes."""
    side = 8 if np.random.rand() < 0.5 else 6
    return image[:side, :side].copy()


def not_an_array(image: np.ndarray) -> list[int]:
    return [1, 2, 3]


@pytest.mark.parametrize("bad_samples", ["skip", "raise"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_raising_transform_names_shard_member_and_cause(
    manifest: str, bad_samples: str, workers: int
) -> None:
    loader = loader_of(manifest, workers, transform=boom, bad_samples=bad_samples)
    with pytest.raises(TransformError) as info:
        list(loader)
    text = str(info.value)
    assert "shard-0000" in text and ".tar member " in text
    assert "ValueError: boom in the recipe" in text


def test_the_cause_is_chained_in_the_main_process(manifest: str) -> None:
    with pytest.raises(TransformError) as info:
        list(loader_of(manifest, 0, transform=boom))
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("workers", [0, 2])
def test_outputs_of_different_shapes_name_the_sample_and_both_shapes(
    manifest: str, workers: int
) -> None:
    with pytest.raises(TransformError) as info:
        list(loader_of(manifest, workers, transform=shape_by_parity, batch_size=8))
    text = str(info.value)
    assert "shape=[8, 8, 3]" in text and "shape=[6, 6, 3]" in text
    assert "member " in text and "(id " in text


def test_a_transform_returning_no_array_is_named(manifest: str) -> None:
    with pytest.raises(TransformError, match="NumPy array or a torch tensor, got list"):
        list(loader_of(manifest, 0, transform=not_an_array))


def test_device_decode_with_a_per_sample_transform_points_to_batch_transform(
    manifest: str,
) -> None:
    with pytest.raises(ValueError, match=r"decode='device'.*batch_transform=fn"):
        loader_of(manifest, 0, transform=jitter, decode="device")
    with pytest.raises(ValueError, match="expected decoded images"):
        loader_of(manifest, 0, transform=jitter, decode=False)
    with pytest.raises(ValueError, match="expected a callable transform"):
        loader_of(manifest, 0, transform="flip")


def test_a_transform_on_a_ready_dataset_is_refused(manifest: str) -> None:
    dataset = ShardDataset(manifest, batch_size=4, image_size=16)
    with pytest.raises(ValueError, match=r"\['transform'\]: set them on the ShardDataset"):
        make_loader(dataset, num_workers=0, transform=jitter)


def test_undecodable_bytes_stay_a_bad_sample(tmp_path: Path) -> None:
    def image(gid: int) -> bytes:
        return b"\xff\xd8\xff\xe0 not a jpeg" if gid == 3 else jpeg_bytes(gid)

    manifest = write_test_shards(tmp_path / "data", [6, 6], image_bytes=image)
    loader = loader_of(str(manifest), 2, transform=jitter)
    ids = [gid for batch in loader for gid in batch.ids[~batch.padded].tolist()]
    assert sorted(ids) == [g for g in range(12) if g != 3]
    with pytest.raises(Exception, match="bad sample"):
        list(loader_of(str(manifest), 2, transform=jitter, bad_samples="raise"))


def test_full_image_gets_the_whole_decoded_image(manifest: str) -> None:
    def keep_shape(image: np.ndarray) -> np.ndarray:
        return np.array(image.shape)

    batch = next(iter(loader_of(manifest, 0, transform=FullImage(keep_shape))))
    assert batch.images.tolist() == [[20, 24, 3]] * 4
    crop = next(iter(loader_of(manifest, 0, transform=identity)))
    assert tuple(crop.images.shape) == (4, 16, 16, 3)


def dtype_by_draw(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) if np.random.rand() < 0.5 else image


def strings(image: np.ndarray) -> np.ndarray:
    return np.array(["a", "b"])


def test_outputs_of_different_dtypes_and_unstackable_dtypes_are_named(manifest: str) -> None:
    with pytest.raises(TransformError) as info:
        list(loader_of(manifest, 0, transform=dtype_by_draw, batch_size=8))
    assert "dtype=uint8" in str(info.value) and "dtype=float32" in str(info.value)
    with pytest.raises(TransformError, match="a dtype torch can hold, got dtype=<U1"):
        list(loader_of(manifest, 0, transform=strings))


def test_full_image_meets_a_pixel_bomb_as_a_bad_sample(tmp_path: Path) -> None:
    def image(gid: int) -> bytes:
        return png_bomb() if gid == 2 else jpeg_bytes(gid)

    manifest = str(write_test_shards(tmp_path / "data", [5], image_bytes=image))
    full = FullImage(keep_corner)
    ids = [g for b in loader_of(manifest, 0, transform=full) for g in b.ids[~b.padded].tolist()]
    assert sorted(ids) == [0, 1, 3, 4]
    with pytest.raises(BadSampleError, match="not decoded"):
        list(loader_of(manifest, 0, transform=full, bad_samples="raise"))


def keep_corner(image: np.ndarray) -> np.ndarray:
    return image[:8, :8].copy()
