"""The bench modes: one table, the only list of them (docs/architecture.md, "Benchmark").

The CLI's default and choices, the service's accepted modes, the dashboard's check boxes and the
demo all derive from ``MODES``. Adding a mode is one row here plus its builder, a function
``ModeSetup -> BuiltMode`` that raises ``ModeUnavailable`` when the mode cannot run here.

A row names its builder as ``"module:function"`` and ``build_mode`` imports it on first use, so
this table imports nothing heavy: the CLI parser and the service's request models read it
without loading torch.

``DECODES`` is the one list of ``--decode`` values (the CLI's and the service's ``decode``):
``opencv`` decodes in the workers, ``none`` reads bytes only. Device decode is compared on its
own by ``python -m loader.bench.decodecompare``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loader.bench.setup import BuiltMode, ModeSetup

__all__ = ["DECODES", "DEFAULT_MODES", "MODES", "MODE_NAMES", "Mode", "build_mode"]

DECODES = ("opencv", "none")

_OURS = "loader.bench.builders:"
_PEERS = "loader.bench.peers:"
_FOLDER_PEERS = "loader.bench.folder_peers:"


@dataclass(frozen=True)
class Mode:
    """One row: the mode's name, its builder (``"module:function"``), whether a bare
    ``shardfeed bench`` runs it, and what it is in one line."""

    name: str
    builder: str
    default: bool
    summary: str

    def build(self, setup: ModeSetup) -> BuiltMode:
        """This mode's loader over ``setup``; ``ModeUnavailable`` when it cannot run here."""
        module, _, function = self.builder.partition(":")
        built: BuiltMode = getattr(importlib.import_module(module), function)(setup)
        return built


MODES: tuple[Mode, ...] = (
    Mode("map", _OURS + "map_mode", True, "map-style folder, one file per sample, sampler"),
    Mode("tar-naive", _OURS + "tar_naive_mode", True, "every worker reads every shard"),
    Mode("tar-per-worker", _OURS + "tar_per_worker_mode", True, "one shard per worker"),
    Mode("tar-aware", _OURS + "tar_aware_mode", True, "shardfeed: disjoint balanced ranges"),
    Mode("webdataset", _PEERS + "webdataset_mode", True, "webdataset's pipeline over our shards"),
    Mode(
        "litdata", _PEERS + "litdata_mode", False, "LitData StreamingDataset over a converted copy"
    ),
    Mode(
        "pil-folder",
        _FOLDER_PEERS + "pil_folder_mode",
        False,
        "ImageFolder recipe: PIL decode, RandomResizedCrop + flip, default DataLoader",
    ),
    Mode("spdl", _FOLDER_PEERS + "spdl_mode", False, "SPDL thread pipeline over the folder"),
    Mode(
        "mosaic",
        "loader.bench.mosaic:mosaic_mode",
        False,
        "MosaicML Streaming over an MDS copy converted by its MDSWriter",
    ),
    Mode(
        "tar-aware-seeded",
        "loader.bench.transform_modes:tar_aware_seeded_mode",
        False,
        "tar-aware + an identity per-sample transform: the cost of seeding each sample",
    ),
    Mode(
        "tar-aware-recipe",
        "loader.bench.transform_modes:tar_aware_recipe_mode",
        False,
        "tar-aware + ColorJitter and RandomErasing per sample in NumPy/OpenCV",
    ),
    Mode(
        "device-bytes",
        _OURS + "device_bytes_mode",
        False,
        "tar-aware with decode='device': workers read, plan crops and batch bytes (--decode none)",
    ),
    Mode(
        "tar-aware-eval",
        "loader.bench.evalmode:tar_aware_eval_mode",
        False,
        "tar-aware in eval order through ExactEval: its overhead as eval_overhead",
    ),
)
MODE_NAMES: tuple[str, ...] = tuple(mode.name for mode in MODES)
DEFAULT_MODES: tuple[str, ...] = tuple(mode.name for mode in MODES if mode.default)


def build_mode(name: str, setup: ModeSetup) -> BuiltMode:
    """Build mode ``name``'s loader; raises ``ModeUnavailable`` when it cannot run here."""
    for mode in MODES:
        if mode.name == name:
            return mode.build(setup)
    raise ValueError(f"expected a mode in {', '.join(MODE_NAMES)}, got mode={name!r}")
