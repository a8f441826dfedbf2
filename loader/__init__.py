"""Loader: stream tar shards into training batches, exactly once per epoch, any workers/ranks.

The core lives at this level (dataset, DataLoader wrapper, batches, decode, tracker, reporter);
each concern has a subpackage: ``loader.plan`` (the epoch plan), ``loader.remote`` (remote
reads), ``loader.resume``, ``loader.device`` (the GPU path), ``loader.mix`` (mixing
datasets), ``loader.worker`` (inside a worker), ``loader.eval`` (exact evaluation),
``loader.bench`` and ``loader.train``
(docs/architecture.md, "Rooms")."""

from loader._errors import ShardReadError
from loader._workers import WorkerTimeoutError
from loader.badsamples import BadSampleError
from loader.batch import Batch, BatchBuilder
from loader.dataloader import ClosingDataLoader, make_loader
from loader.dataset import ShardDataset
from loader.decode import DecodeError, ImageDecoder, NoDecode
from loader.device import ByteBatch, DeviceBatch, DeviceDecoder, DevicePrefetcher
from loader.eval import EvalCertificateError, ExactEval
from loader.mix import MixError, Source
from loader.plan import plan_epoch, plan_worker
from loader.remote import RemoteReadError, RetryPolicy, ShardCache
from loader.reporter import StatsReporter
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
    "EvalCertificateError",
    "ExactEval",
    "ImageDecoder",
    "MixError",
    "NoDecode",
    "RemoteReadError",
    "RetryPolicy",
    "ShardCache",
    "ShardDataset",
    "ShardReadError",
    "Source",
    "StatsReporter",
    "WorkerTimeoutError",
    "make_loader",
    "plan_epoch",
    "plan_worker",
    "resolve_source",
]
