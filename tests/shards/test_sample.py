"""Tests for shards.sample: the synthetic ImageNet-like folder generator."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from shards.format import sniff_image_format
from shards.labelsfile import read_labels
from shards.sample import (
    SampleSummary,
    add_sample_arguments,
    make_sample,
    split_for,
    wordnet_ids,
)

WNID = re.compile(r"^n\d{8}$")
FILE = re.compile(r"^(n\d{8})_(\d+)\.JPEG$")


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _decode(path: Path) -> np.ndarray:
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} does not decode"
    return image


# --- wordnet_ids -----------------------------------------------------------------------------


def test_wordnet_ids_are_distinct_sorted_wnids() -> None:
    ids = wordnet_ids(500, seed=3)
    assert len(ids) == 500
    assert len(set(ids)) == 500
    assert ids == sorted(ids)
    assert all(WNID.match(i) for i in ids)


def test_wordnet_ids_depend_only_on_seed() -> None:
    assert wordnet_ids(20, seed=7) == wordnet_ids(20, seed=7)
    assert wordnet_ids(20, seed=7) != wordnet_ids(20, seed=8)
    assert wordnet_ids(0, seed=1) == []


@pytest.mark.parametrize(
    ("count", "seed", "match"),
    [(-1, 0, "count=-1"), (14_000_001, 0, "count=14000001"), (3, -2, "seed=-2")],
)
def test_wordnet_ids_rejects_bad_arguments(count: int, seed: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        wordnet_ids(count, seed)


# --- make_sample: layout ---------------------------------------------------------------------


def test_layout_counts_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    summary = make_sample(out, images=23, classes=5, seed=4, size="tiny")

    assert isinstance(summary, SampleSummary)
    assert summary.root == str(out.resolve())
    assert (summary.images, summary.classes) == (23, 5)
    assert summary.class_names == wordnet_ids(5, seed=4)
    assert sorted(p.name for p in out.iterdir()) == summary.class_names

    counts = [len(list((out / wnid).iterdir())) for wnid in summary.class_names]
    assert counts == [5, 5, 5, 4, 4]

    files = _files(out)
    assert len(files) == 23
    assert summary.bytes == sum(len(data) for data in files.values())
    for rel in files:
        folder, name = rel.split("/")
        match = FILE.match(name)
        assert match is not None, f"bad name {rel!r}"
        assert match.group(1) == folder


def test_empty_existing_folder_is_accepted(tmp_path: Path) -> None:
    summary = make_sample(tmp_path, images=3, classes=3, size="tiny")
    assert len(_files(tmp_path)) == 3
    assert summary.classes == 3


def test_one_class_gets_every_image(tmp_path: Path) -> None:
    summary = make_sample(tmp_path / "o", images=7, classes=1, size="tiny")
    (only,) = summary.class_names
    names = sorted(p.name for p in (tmp_path / "o" / only).iterdir())
    assert len(names) == 7
    assert all(FILE.match(n) for n in names)


# --- make_sample: determinism ----------------------------------------------------------------


def test_same_arguments_give_same_bytes_for_any_worker_count(tmp_path: Path) -> None:
    calls: list[list[int]] = [[], [], []]
    for i, workers in enumerate((1, 1, 2)):
        make_sample(
            tmp_path / f"b{i}",
            images=30,
            classes=4,
            seed=11,
            size="tiny",
            workers=workers,
            progress=calls[i].append,
        )
    first = _files(tmp_path / "b0")
    assert len(first) == 30
    assert _files(tmp_path / "b1") == first
    assert _files(tmp_path / "b2") == first
    for made in calls:
        assert sum(made) == 30
        assert all(n > 0 for n in made)


def test_seed_and_size_change_the_bytes(tmp_path: Path) -> None:
    make_sample(tmp_path / "a", images=4, classes=2, seed=0, size="tiny")
    make_sample(tmp_path / "b", images=4, classes=2, seed=1, size="tiny")
    make_sample(tmp_path / "c", images=4, classes=2, seed=0, size="small")
    a, b, c = (list(_files(tmp_path / x).values()) for x in "abc")
    assert not set(a) & set(b)
    assert not set(a) & set(c)


# --- make_sample: image content --------------------------------------------------------------


@pytest.mark.parametrize(("size", "lo", "hi"), [("tiny", 32, 48), ("small", 64, 96)])
def test_files_are_real_jpegs_of_the_size_family(
    tmp_path: Path, size: str, lo: int, hi: int
) -> None:
    make_sample(tmp_path, images=12, classes=3, seed=2, size=size)
    shapes = set()
    for path in tmp_path.rglob("*.JPEG"):
        assert sniff_image_format(path.read_bytes()[:16]) == "jpg"
        image = _decode(path)
        h, w, ch = image.shape
        assert ch == 3
        assert lo <= h <= hi and lo <= w <= hi, f"{path.name}: {image.shape}"
        shapes.add((h, w))
    assert len(shapes) > 1, "dimensions should vary"


def test_imagenet_size_looks_like_imagenet(tmp_path: Path) -> None:
    make_sample(tmp_path, images=12, classes=2, seed=5, size="imagenet")
    sizes = []
    for path in tmp_path.rglob("*.JPEG"):
        h, w, _ = _decode(path).shape
        assert 300 <= h <= 600 and 300 <= w <= 600, f"{path.name}: {h}x{w}"
        sizes.append(path.stat().st_size)
        # textured, not flat: JPEG of a flat 500x375 image would be a few KB
        assert path.stat().st_size > 20_000
    assert 40_000 < float(np.mean(sizes)) < 250_000


def test_images_in_a_class_vary(tmp_path: Path) -> None:
    summary = make_sample(tmp_path, images=6, classes=1, seed=9, size="small")
    images = [_decode(p) for p in sorted((tmp_path / summary.class_names[0]).iterdir())]
    crops = [im[:64, :64].astype(np.float32) for im in images]
    for i in range(len(crops)):
        for k in range(i + 1, len(crops)):
            assert float(np.abs(crops[i] - crops[k]).mean()) > 5.0


def test_images_are_textured(tmp_path: Path) -> None:
    make_sample(tmp_path, images=8, classes=2, seed=1, size="small")
    for path in tmp_path.rglob("*.JPEG"):
        grey = cv2.cvtColor(_decode(path), cv2.COLOR_BGR2GRAY).astype(np.float32)
        high = float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())
        assert high > 4.0, f"{path.name} lacks high-frequency detail: {high:.2f}"


def test_classes_are_separable_by_mean_colour(tmp_path: Path) -> None:
    classes, per_class = 10, 16
    summary = make_sample(tmp_path, images=classes * per_class, classes=classes, size="tiny")
    features, labels = [], []
    for label, wnid in enumerate(summary.class_names):
        for path in sorted((tmp_path / wnid).iterdir()):
            features.append(_decode(path).astype(np.float32).mean(axis=(0, 1)))
            labels.append(label)
    x, y = np.asarray(features), np.asarray(labels)
    train = np.arange(len(y)) % 2 == 0
    means = np.stack([x[train & (y == c)].mean(axis=0) for c in range(classes)])
    distances = ((x[~train][:, None, :] - means[None]) ** 2).sum(axis=-1)
    accuracy = float((distances.argmin(axis=1) == y[~train]).mean())
    assert accuracy >= 0.4, f"nearest-class-mean accuracy {accuracy:.2f}, chance is 0.10"


# --- make_sample: bad arguments --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": 0, "classes": 1}, "images=0"),
        ({"images": 5, "classes": 0}, "classes=0"),
        ({"images": 3, "classes": 4}, "classes=4 images=3"),
        ({"images": 3, "classes": 1, "size": "huge"}, "size='huge'"),
        ({"images": 3, "classes": 1, "workers": 0}, "workers=0"),
        ({"images": 3, "classes": 1, "seed": -1}, "seed=-1"),
    ],
)
def test_bad_arguments_raise_and_write_nothing(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        make_sample(out, **kwargs)  # type: ignore[arg-type]
    assert not out.exists()


def test_non_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="pick an empty folder"):
        make_sample(tmp_path, images=2, classes=1, size="tiny")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_file_as_out_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        make_sample(target, images=2, classes=1, size="tiny")


# --- add_sample_arguments --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardfeed sample")
    add_sample_arguments(parser)
    return parser


def test_arguments_map_onto_make_sample(tmp_path: Path) -> None:
    args = _parser().parse_args(
        [str(tmp_path / "o"), "--images", "6", "--classes", "2", "--seed", "3"]
        + ["--size", "tiny", "--workers", "1"]
    )
    summary = make_sample(
        args.out,
        images=args.images,
        classes=args.classes,
        seed=args.seed,
        size=args.size,
        workers=args.workers,
    )
    assert (summary.images, summary.classes) == (6, 2)
    assert summary.class_names == wordnet_ids(2, seed=3)


def test_argument_defaults() -> None:
    args = _parser().parse_args(["out"])
    assert args.out == "out"
    assert args.seed == 0
    assert args.size == "imagenet"
    assert args.workers == 1
    assert args.images >= args.classes >= 1


def test_unknown_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["out", "--size", "huge"])
    assert info.value.code == 2
    assert "huge" in capsys.readouterr().err


# --- make_sample: the val split and the ImageNet-val layout ----------------------------------

VAL_FILE = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")


def test_val_split_has_the_train_classes_and_other_images(tmp_path: Path) -> None:
    train = make_sample(tmp_path / "train", images=24, classes=4, seed=6, size="tiny")
    val = make_sample(tmp_path / "val", images=12, classes=4, seed=6, size="tiny", split="val")
    assert val.class_names == train.class_names and val.split == "val"
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == val.class_names
    assert [len(list((tmp_path / "val" / w).iterdir())) for w in val.class_names] == [3] * 4
    files = _files(tmp_path / "val")
    matches = [VAL_FILE.match(rel.split("/")[1]) for rel in files]
    assert sorted(int(m.group(1)) for m in matches if m) == list(range(1, 13))
    assert not set(files.values()) & set(_files(tmp_path / "train").values())
    assert val.image_root == str((tmp_path / "val").resolve()) and val.labels is None


def test_imagenet_val_layout_is_the_val_split_flat_plus_its_csv(tmp_path: Path) -> None:
    folders = make_sample(tmp_path / "f", images=10, classes=3, seed=2, size="tiny", split="val")
    flat = make_sample(
        tmp_path / "v", images=10, classes=3, seed=2, size="tiny", split="val",
        layout="imagenet-val",
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["LOC_val_solution.csv", "val"]
    assert flat.class_names == folders.class_names
    assert flat.image_root == str((tmp_path / "v" / "val").resolve())
    assert flat.labels == str((tmp_path / "v" / "LOC_val_solution.csv").resolve())
    labels = read_labels(flat.labels)
    assert labels.format == "imagenet-csv" and list(labels.rows) == sorted(labels.rows)
    by_name = {rel.split("/")[1]: (rel.split("/")[0], data)
               for rel, data in _files(tmp_path / "f").items()}  # fmt: skip
    flat_files = _files(tmp_path / "v" / "val")
    assert set(flat_files) == set(by_name)
    for name, data in flat_files.items():
        wnid, same = by_name[name]
        assert data == same and labels.rows[Path(name).stem].label == wnid
        h, w = _decode(tmp_path / "v" / "val" / name).shape[:2]
        box = (tmp_path / "v" / "LOC_val_solution.csv").read_text().split(f"{Path(name).stem},")[1]
        assert box.splitlines()[0] == f"{wnid} 0 0 {w - 1} {h - 1}"


def test_val_split_is_the_same_for_any_worker_count(tmp_path: Path) -> None:
    for i, workers in enumerate((1, 2)):
        make_sample(tmp_path / f"v{i}", images=20, classes=2, seed=4, size="tiny",
                    split="val", layout="imagenet-val", workers=workers)  # fmt: skip
    assert _files(tmp_path / "v0") == _files(tmp_path / "v1")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "test"}, "split='test'"),
        ({"layout": "kaggle"}, "layout='kaggle'"),
        ({"layout": "imagenet-val"}, "expected split='val' with layout='imagenet-val'"),
    ],
)
def test_bad_split_or_layout_raise_and_write_nothing(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        make_sample(tmp_path / "never", images=3, classes=1, size="tiny", **kwargs)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], ("train", "folders")),
        (["--split", "val"], ("val", "folders")),
        (["--layout", "imagenet-val"], ("val", "imagenet-val")),
        (["--split", "train", "--layout", "imagenet-val"], ("train", "imagenet-val")),
    ],
)
def test_split_follows_the_layout_when_left_out(
    given: list[str], expected: tuple[str, str]
) -> None:
    args = _parser().parse_args(["out", *given])
    assert (split_for(args.split, args.layout), args.layout) == expected
