"""Training: an example job that streams shards to the device and reports to the service."""

from loader.train.loop import train
from loader.train.model import SmallCNN, random_flip
from loader.train.options import EpochReport, TrainOptions

__all__ = ["EpochReport", "SmallCNN", "TrainOptions", "random_flip", "train"]
