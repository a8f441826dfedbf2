"""Tests for shards.source: which label each image gets from a labels file or a class list."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shards.labelreport import LabelsError
from shards.scan import Candidate
from shards.source import read_class_list, scan_source
from tests.shards.helpers import imagenet_csv, make_flat, make_plain


def manifest_with(folder: Path, classes: object) -> Path:
    """A minimal valid manifest whose class list is ``classes``."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "__kind__": "wids-shard-index-v1",
        "shardlist": [{"url": "shard-000000.tar", "nsamples": 1}],
        "classes": classes,
    }
    (folder / "manifest.json").write_text(json.dumps(doc))
    return folder / "manifest.json"


def labels(tmp_path: Path, text: str, name: str = "val.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_plain_scan_stays_the_class_folder_scan(plain_folder: Path) -> None:
    scan = scan_source(plain_folder)
    assert scan.labels is None
    assert scan.classes == [f"n{k:08d}" for k in range(4)]


def test_flat_folder_labelled_by_imagenet_csv(tmp_path: Path) -> None:
    src = tmp_path / "val"
    make_flat(src, ["v3.JPEG", "v1.JPEG", "v2.JPEG"])
    csv = labels(tmp_path, imagenet_csv({"v1": "nb", "v2": "na", "v3": "nb"}), "LOC.csv")
    scan = scan_source(src, csv)
    assert scan.classes == ["na", "nb"]
    assert [(c.rel, c.label) for c in scan.candidates] == [
        ("v1.JPEG", 1),
        ("v2.JPEG", 0),
        ("v3.JPEG", 1),
    ]
    assert all(c.size == (src / c.rel).stat().st_size for c in scan.candidates)
    assert scan.labels is not None and scan.labels.labels_file == str(csv.resolve())
    assert scan.empty_classes == [] and scan.skipped == []


def test_rows_name_images_by_file_name_or_stem(tmp_path: Path) -> None:
    src = tmp_path / "val"
    make_flat(src, ["a.jpg", "b.png", "c d.jpg"])
    scan = scan_source(src, labels(tmp_path, "a.jpg n1\nb n2\nc d.jpg n1\n"))
    assert {c.rel: c.label for c in scan.candidates} == {"a.jpg": 0, "b.png": 1, "c d.jpg": 0}


def test_images_without_rows_and_rows_without_images_are_counted_and_skipped(
    tmp_path: Path,
) -> None:
    src = tmp_path / "val"
    make_flat(src, ["a.jpg", "b.jpg", "stray.jpg"])
    (src / "notes.txt").write_text("x")
    (src / "sub").mkdir()
    scan = scan_source(src, labels(tmp_path, "a.jpg n1\nb.jpg n2\ngone.jpg n3\n"))
    assert [c.rel for c in scan.candidates] == ["a.jpg", "b.jpg"]
    assert scan.classes == ["n1", "n2", "n3"] and scan.empty_classes == ["n3"]
    assert scan.labels is not None
    assert scan.labels.images_without_label == ["stray.jpg"]
    assert scan.labels.rows_without_image == ["gone.jpg"]
    reasons = {s.path: s.reason for s in scan.skipped}
    assert reasons["stray.jpg"] == "no label: not named in val.txt"
    assert reasons["notes.txt"].startswith("not an image file name")
    assert reasons["sub"].startswith("folder in a flat source")


def test_classes_from_fixes_the_integers_whatever_val_lacks_or_orders(tmp_path: Path) -> None:
    train = manifest_with(tmp_path / "train", ["zebra", "apple", "mango"])
    src = tmp_path / "val"
    make_flat(src, ["1.jpg", "2.jpg", "3.jpg"])
    text = "3.jpg mango\n1.jpg zebra\n2.jpg kiwi\n"
    scan = scan_source(src, labels(tmp_path, text), classes_from=train.parent)
    assert scan.classes == ["zebra", "apple", "mango"]
    assert {c.rel: c.label for c in scan.candidates} == {"1.jpg": 0, "3.jpg": 2}
    assert scan.empty_classes == ["apple"]
    assert scan.labels is not None
    assert scan.labels.images_with_unknown_class == ["2.jpg (kiwi)"]
    assert scan.labels.classes_from == str(train.parent.resolve())
    reasons = {s.path: s.reason for s in scan.skipped}
    assert reasons["2.jpg"] == "class not in the class list: 'kiwi' (line 3)"


def test_classes_from_with_class_folders_remaps_and_reports_extra_folders(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    rels = make_plain(src, 6, 3)  # n00000000, n00000001, n00000002
    train = manifest_with(tmp_path / "t", ["n00000002", "n00000009", "n00000000"])
    scan = scan_source(src, classes_from=train)
    assert scan.classes == ["n00000002", "n00000009", "n00000000"]
    got = {c.rel: c.label for c in scan.candidates}
    assert got == {r: 2 if r.startswith("n00000000") else 0 for r in rels if "01/" not in r}
    assert scan.empty_classes == ["n00000009"]
    assert scan.labels is not None and scan.labels.labels_file is None
    assert scan.labels.class_folders_not_in_list == ["n00000001"]
    assert sorted(scan.labels.images_with_unknown_class) == [
        f"{r} (n00000001)" for r in rels if r.startswith("n00000001")
    ]


def test_scan_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    names = ["c.jpg", "a.jpg", "b.jpg", "é.jpg"]
    text = labels(tmp_path, "a.jpg n1\nb.jpg n2\nc.jpg n1\né.jpg n2\n")
    make_flat(tmp_path / "x", names)
    make_flat(tmp_path / "y", names[::-1])
    x, y = scan_source(tmp_path / "x", text), scan_source(tmp_path / "y", text)
    assert [(c.rel, c.label) for c in x.candidates] == [(c.rel, c.label) for c in y.candidates]
    assert [c.rel for c in x.candidates] == sorted(names)


@pytest.mark.parametrize(
    ("files", "text", "match"),
    [
        (["a.jpg", "a.png"], "a n1\n", "row 'a' names two images, 'a.jpg' and 'a.png'"),
        (["a.jpg"], "a.jpg n1\na n2\n", "two rows for image 'a.jpg', line 1 ('a.jpg') and line 2"),
        (["a.jpg"], "other.jpg n1\n", "got none of its 1 row(s) matching the 1 image file(s)"),
        ([], "a.jpg n1\n", "matching the 0 image file(s)"),
    ],
)
def test_labels_that_cannot_label_the_folder_raise(
    tmp_path: Path, files: list[str], text: str, match: str
) -> None:
    src = tmp_path / "val"
    make_flat(src, files)
    with pytest.raises(LabelsError, match=re.escape(match)) as info:
        scan_source(src, labels(tmp_path, text))
    assert "\n" not in str(info.value)


def test_labels_given_for_class_folders_hint_at_leaving_them_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_plain(src, 4, 2)
    with pytest.raises(LabelsError, match="SRC holds folders: for root/<class>/<image> leave"):
        scan_source(src, labels(tmp_path, "img_00000.jpg n1\n"))


def test_read_class_list_takes_a_manifest_or_its_folder(tmp_path: Path) -> None:
    path = manifest_with(tmp_path / "t", ["b", "a"])
    assert read_class_list(path) == read_class_list(path.parent) == ["b", "a"]


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        ([], "expected a non-empty list of class names"),
        (["a", ""], "got '' in 2 class"),
        (["a", 3], r"expected classes\[1\] to be a valid string, got classes\[1\]=3"),
        (["a", "b", "a"], "expected each class once in 'classes', got 'a' twice"),
    ],
)
def test_bad_class_lists_raise(tmp_path: Path, classes: object, match: str) -> None:
    path = manifest_with(tmp_path / "t", classes)
    with pytest.raises(LabelsError, match=match):
        read_class_list(path)


def test_missing_or_broken_class_list_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--classes-from: no manifest at"):
        read_class_list(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(LabelsError, match="--classes-from: .*not valid JSON"):
        read_class_list(tmp_path)


def test_candidates_are_plain_candidates(tmp_path: Path) -> None:
    make_flat(tmp_path / "v", ["a.jpg"])
    scan = scan_source(tmp_path / "v", labels(tmp_path, "a n1\n"))
    assert scan.candidates == [Candidate("a.jpg", 0, (tmp_path / "v" / "a.jpg").stat().st_size)]
