"""Shard builder: turn ``root/<class>/<image>`` into reproducible tar shards plus a manifest."""

from shards.build import BuildError, BuildOptions, build_shards, merge_build
from shards.manifest import Manifest, ManifestError, ShardEntry
from shards.plan import SizingOptions
from shards.sample import make_sample
from shards.verify import inspect_build, verify_build

__all__ = [
    "BuildError",
    "BuildOptions",
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
