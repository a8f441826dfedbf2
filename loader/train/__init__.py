"""Training: an example job that streams shards to the device and reports to the service."""

from loader.train.loop import EpochReport, TrainOptions, train
from loader.train.model import SmallCNN, random_flip

__all__ = ["EpochReport", "SmallCNN", "TrainOptions", "random_flip", "train"]
