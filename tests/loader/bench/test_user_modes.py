"""Tests for the modes users would pick instead of ours (loader/bench/folder_peers.py,
loader/bench/mosaic.py): ``pil-folder``, ``spdl`` and ``mosaic``.

Their accounting, not their speed: every epoch delivers each sample exactly once, with the label
it has on disk, as uint8 ``[B, S, S, 3]`` crops, with real DataLoader worker processes (or SPDL
threads), and the engine's tracker agrees. A mode whose package is missing is skipped with the
reason the mode itself gives (mosaicml-streaming comes only with ``make bench``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from loader.bench import BenchConfig, run_bench
from loader.bench.modes import build_mode
from loader.bench.mosaic import mds_cache_dir
from loader.bench.setup import ModeSetup, ModeUnavailable
from loader.dataloader import stop_workers
from loader.sources import resolve_source
from shards.build import BuildOptions, build_shards
from shards.plan import SizingOptions
from shards.sample import make_sample
from shards.scan import scan_folder

IMAGES, SHARDS, SIZE, BATCH = 30, 3, 16, 8
PACKAGES = {"pil-folder": "PIL", "spdl": "spdl.pipeline", "mosaic": "streaming"}


def installed(mode: str) -> bool:
    module = PACKAGES[mode]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def need(mode: str) -> None:
    if not installed(mode):
        pytest.skip(f"{PACKAGES[mode]} is not installed ('make bench' installs it)")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("user-modes")
    src, out = root / "src", root / "shards"
    make_sample(src, images=IMAGES, classes=3, size="tiny")
    build_shards(
        src, out, BuildOptions(sizing=SizingOptions(num_shards=SHARDS), show_progress=False)
    )
    return src, out


def setup_for(src: Path, out: Path, **kw: Any) -> ModeSetup:
    options: dict[str, Any] = {
        "shards": str(out / "manifest.json"),
        "source": resolve_source(str(out / "manifest.json")),
        "folder": str(src),
        "folder_url": None,
        "shards_dir": str(out),
        "workers": 2,
        "batch_size": BATCH,
        "image_size": SIZE,
        "decode": True,
        "seed": 0,
        "latency_ms": 0.0,
        "http": False,
    }
    options.update(kw)
    return ModeSetup(**options)


def folder_labels(src: Path) -> list[int]:
    return [c.label for c in scan_folder(src).candidates]


def shard_labels(out: Path) -> dict[int, int]:
    from loader.reader import ShardReader

    labels = {}
    for entry in resolve_source(str(out / "manifest.json")).shards:
        with ShardReader(entry) as reader:
            for s in reader.read(0, entry.nsamples):
                labels[int(s.gid)] = int(s.label)
    return labels


def one_epoch(loader: Any) -> tuple[list[int], list[int], list[torch.Tensor]]:
    ids: list[int] = []
    labels: list[int] = []
    images: list[torch.Tensor] = []
    for batch in loader:
        assert batch.images.dtype == torch.uint8
        assert batch.images.shape[1:] == (SIZE, SIZE, 3) and len(batch.images) <= BATCH
        assert len(batch.ids) == len(batch.labels) == len(batch.padded) == len(batch.nbytes)
        assert not batch.padded.any() and (batch.nbytes > 0).all()
        ids += batch.ids.tolist()
        labels += batch.labels.tolist()
        images.append(batch.images.clone())
    return ids, labels, images


@pytest.mark.parametrize("mode", ["pil-folder", "spdl", "mosaic"])
def test_each_epoch_delivers_every_sample_once_with_its_label(
    mode: str, sample: tuple[Path, Path]
) -> None:
    need(mode)
    src, out = sample
    built = build_mode(mode, setup_for(src, out))
    assert built.num_ids == IMAGES
    truth = dict(enumerate(folder_labels(src))) if mode != "mosaic" else shard_labels(out)
    try:
        orders = []
        for _ in range(2):
            ids, labels, images = one_epoch(built.loader)
            assert sorted(ids) == list(range(IMAGES)), (mode, ids)
            assert labels == [truth[i] for i in ids]
            pixels = torch.cat(images)
            assert pixels.float().std() > 1, "decoded crops are not blank"
            orders.append(ids)
    finally:
        stop_workers(built.loader)
    if mode != "mosaic":
        assert orders[0] != orders[1], "a shuffled mode reshuffles each epoch"


def test_spdl_output_does_not_depend_on_thread_scheduling(sample: tuple[Path, Path]) -> None:
    need("spdl")
    src, out = sample
    runs = []
    for workers in (1, 3):
        built = build_mode("spdl", setup_for(src, out, workers=workers))
        ids, _, images = one_epoch(built.loader)
        by_id = dict(zip(ids, torch.cat(images), strict=True))
        runs.append((ids, by_id))
    assert sorted(runs[0][0]) == sorted(runs[1][0])
    for i in range(IMAGES):
        assert torch.equal(runs[0][1][i], runs[1][1][i]), i


def test_pil_folder_is_reproducible_from_the_seed(sample: tuple[Path, Path]) -> None:
    need("pil-folder")
    src, out = sample
    epochs = []
    for _ in range(2):
        built = build_mode("pil-folder", setup_for(src, out, seed=5))
        ids, _, images = one_epoch(built.loader)
        epochs.append((ids, torch.cat(images)))
    assert epochs[0][0] == epochs[1][0] and torch.equal(epochs[0][1], epochs[1][1])


def test_mosaic_converts_once_into_a_cached_copy(sample: tuple[Path, Path]) -> None:
    need("mosaic")
    src, out = sample
    setup = setup_for(src, out, workers=0)
    build_mode("mosaic", setup)
    cache = mds_cache_dir(out)
    index = cache / "index.json"
    assert index.is_file() and not list(out.glob(".mds-*.tmp-*"))
    stamp = index.stat().st_mtime_ns
    built = build_mode("mosaic", setup)
    ids, _, _ = one_epoch(built.loader)
    assert sorted(ids) == list(range(IMAGES)) and index.stat().st_mtime_ns == stamp


def test_modes_without_their_input_say_why(sample: tuple[Path, Path]) -> None:
    src, out = sample
    for mode in ("pil-folder", "spdl"):
        with pytest.raises(ModeUnavailable, match="give --folder") as info:
            build_mode(mode, setup_for(src, out, folder=None))
        assert info.value.status == "skipped"
    if installed("mosaic"):
        with pytest.raises(ModeUnavailable, match="local shard folder") as info:
            build_mode("mosaic", setup_for(src, out, shards_dir=None))


def test_engine_counts_them_exactly_without_decoding_and_with_latency(
    sample: tuple[Path, Path],
) -> None:
    src, out = sample
    modes = tuple(m for m in PACKAGES if installed(m))
    if not modes:
        pytest.skip("none of Pillow, spdl-core, mosaicml-streaming is installed")
    for decode, latency in ((True, 0.0), (False, 1.0)):
        config = BenchConfig(
            folder=str(src), shards=str(out), modes=modes, workers=2, batch_size=BATCH,
            epochs=2, image_size=SIZE, decode=decode, latency_ms=latency,
        )  # fmt: skip
        doc = run_bench(config)
        for name in modes:
            result = doc["modes"][name]
            assert result["status"] == "ok", (name, result)
            for epoch in result["epochs"]:
                got = (epoch["samples"], epoch["unique"], epoch["duplicates"], epoch["missing"])
                assert got == (IMAGES, IMAGES, 0, 0), (name, decode, got)
            assert result["samples_per_s"] > 0
            assert ("+1 ms" in result["storage"]) == bool(latency), result["storage"]
