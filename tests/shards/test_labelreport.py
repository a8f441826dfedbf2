"""Tests for shards.labelreport: counts with the first names, phrases, --strict."""

from __future__ import annotations

import pytest

from shards.labelreport import FIRST, LabelReport, LabelsError, check_strict, problems


def test_to_dict_counts_everything_and_names_the_first_few() -> None:
    many = [f"img_{i}.JPEG" for i in range(FIRST + 3)]
    doc = LabelReport("l.csv", "train/manifest.json", images_without_label=many).to_dict()
    assert doc["labels_file"] == "l.csv" and doc["classes_from"] == "train/manifest.json"
    assert doc["images_without_label"] == {"count": FIRST + 3, "first": many[:FIRST]}
    for kind in ("images_with_unknown_class", "rows_without_image", "class_folders_not_in_list"):
        assert doc[kind] == {"count": 0, "first": []}


def test_problems_name_each_kind_with_an_ellipsis_when_more() -> None:
    doc = LabelReport(
        "l.csv",
        None,
        images_without_label=[f"x{i}" for i in range(FIRST + 1)],
        rows_without_image=["r1"],
    ).to_dict()
    assert problems(doc) == [
        f"{FIRST + 1} image(s) without a label (x0, x1, x2, x3, x4, ...)",
        "1 labels-file row(s) without an image (r1)",
    ]
    assert problems(None) == [] == problems(LabelReport("l.csv", None).to_dict())


def test_check_strict_passes_a_clean_report_and_raises_one_line_otherwise() -> None:
    check_strict(None)
    check_strict(LabelReport("l.csv", "m.json").to_dict())
    doc = LabelReport(
        None,
        "m.json",
        images_with_unknown_class=["a/1.jpg (zebra)"],
        class_folders_not_in_list=["a"],
    ).to_dict()
    with pytest.raises(LabelsError) as info:
        check_strict(doc)
    message = str(info.value)
    assert "\n" not in message and message.startswith("--strict: expected")
    assert "1 image(s) with a class outside the class list (a/1.jpg (zebra))" in message
    assert "1 class folder(s) not in the class list (a)" in message
    assert "leave out --strict" in message
