"""Loader: stream tar shards into training batches, exactly once per epoch, any workers/ranks."""

from loader._stall import WorkerTimeoutError
from loader.batch import Batch, BatchBuilder
from loader.bytebatch import ByteBatch
from loader.cache import ShardCache
from loader.dataloader import ClosingDataLoader, make_loader
from loader.dataset import BadSampleError, ShardDataset
from loader.decode import DecodeError, ImageDecoder, NoDecode
from loader.device import DeviceBatch, DevicePrefetcher
from loader.devicedecode import DeviceDecoder
from loader.partition import plan_epoch, plan_worker
from loader.reader import RemoteReadError, ShardReadError
from loader.reporter import StatsReporter
from loader.retry import RetryPolicy
from loader.sources import resolve_source
from loader.tracker import DuplicateTracker, EpochCounts

__all__ = [
    "BadSampleError",
    "Batch",
    "BatchBuilder",
    "ByteBatch",
    "ClosingDataLoader",
    "DecodeError",
    "DeviceBatch",
    "DeviceDecoder",
    "DevicePrefetcher",
    "DuplicateTracker",
    "EpochCounts",
    "ImageDecoder",
    "NoDecode",
    "RemoteReadError",
    "RetryPolicy",
    "ShardCache",
    "ShardDataset",
    "ShardReadError",
    "StatsReporter",
    "WorkerTimeoutError",
    "make_loader",
    "plan_epoch",
    "plan_worker",
    "resolve_source",
]
