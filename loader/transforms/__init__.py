"""The job's own augmentation: per-sample transforms in the workers, batch transforms on the
device, both a function of (seed, epoch, sample) (docs/architecture.md, "Transforms").

``make_loader(src, transform=fn)`` runs ``fn`` on each decoded crop in the workers
(``FullImage(fn)``: on the whole decoded image); ``Albumentations`` and ``TensorTransform``
adapt the libraries' pipelines. ``DevicePrefetcher(loader, device, batch_transform=fn)`` runs
``fn(images, labels)`` on the device; ``MixupCutmix``, ``mixup`` and ``cutmix`` are timm's,
``ImagesOnly`` wraps a batch augmentation of images alone (kornia).
"""

from loader.transforms.adapters import Albumentations, ImagesOnly, TensorTransform
from loader.transforms.batch import BatchTransform
from loader.transforms.errors import TransformError
from loader.transforms.mix import MixupCutmix, cutmix, mixup
from loader.transforms.sample import FullImage, SampleTransform
from loader.transforms.seeding import batch_key, sample_key

__all__ = [
    "Albumentations",
    "BatchTransform",
    "FullImage",
    "ImagesOnly",
    "MixupCutmix",
    "SampleTransform",
    "TensorTransform",
    "TransformError",
    "batch_key",
    "cutmix",
    "mixup",
    "sample_key",
]
