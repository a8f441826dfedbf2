"""Loader: stream tar shards into training batches, exactly once per epoch across workers and ranks."""

from loader.baselines import FolderDataset, NaiveTarDataset, PerWorkerTarDataset, folder_loader
from loader.batch import Batch, BatchBuilder
from loader.dataloader import make_loader
from loader.dataset import BadSampleError, ShardDataset
from loader.decode import DecodeError, ImageDecoder, NoDecode
from loader.device import DeviceBatch, DevicePrefetcher
from loader.partition import plan_epoch, plan_worker
from loader.reader import ShardReadError
from loader.sources import resolve_source
from loader.tracker import DuplicateTracker, EpochCounts

__all__ = [
    "BadSampleError",
    "Batch",
    "BatchBuilder",
    "DecodeError",
    "DeviceBatch",
    "DevicePrefetcher",
    "DuplicateTracker",
    "EpochCounts",
    "FolderDataset",
    "ImageDecoder",
    "NaiveTarDataset",
    "NoDecode",
    "PerWorkerTarDataset",
    "ShardDataset",
    "ShardReadError",
    "folder_loader",
    "make_loader",
    "plan_epoch",
    "plan_worker",
    "resolve_source",
]
