"""Shard builder: turn ``root/<class>/<image>``, or a flat folder plus a labels file, into
reproducible tar shards plus a manifest."""

from shards.build import build_shards
from shards.labelreport import LabelsError
from shards.manifest import Manifest, ManifestError, ShardEntry
from shards.merge import merge_build
from shards.options import BuildError, BuildOptions
from shards.plan import SizingOptions
from shards.sample import make_sample
from shards.verify import inspect_build, verify_build

__all__ = [
    "BuildError",
    "BuildOptions",
    "LabelsError",
    "Manifest",
    "ManifestError",
    "ShardEntry",
    "SizingOptions",
    "build_shards",
    "inspect_build",
    "make_sample",
    "merge_build",
    "verify_build",
]
