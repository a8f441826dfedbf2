"""Tests for shards.labelsfile: ImageNet's LOC_val_solution.csv and plain 'filename label' lists."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.labelreport import LabelsError
from shards.labelsfile import LabelRow, read_labels
from tests.shards.helpers import imagenet_csv


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_imagenet_csv_takes_the_first_token_of_each_prediction(tmp_path: Path) -> None:
    path = write(tmp_path, "LOC_val_solution.csv", imagenet_csv({"v2": "n02", "v1": "n01"}))
    labels = read_labels(path)
    assert labels.format == "imagenet-csv"
    assert labels.rows == {"v2": LabelRow("v2", "n02", 2), "v1": LabelRow("v1", "n01", 3)}
    assert list(labels.rows) == ["v2", "v1"]  # file order


def test_imagenet_csv_with_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    text = "\ufeffImageId,PredictionString\r\n\r\nval_1,n9 0 0 5 5 \r\n"
    labels = read_labels(write(tmp_path, "any.txt", text))  # the header decides, not the name
    assert labels.format == "imagenet-csv"
    assert labels.rows == {"val_1": LabelRow("val_1", "n9", 3)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.jpg n1\nb.JPEG  n2\n", {"a.jpg": "n1", "b.JPEG": "n2"}),
        ("a.jpg\tn1\nwith space.jpg\tn 2\n", {"a.jpg": "n1", "with space.jpg": "n 2"}),
        ("a.jpg,n1\nb,c.jpg,n2\n", {"a.jpg": "n1", "b,c.jpg": "n2"}),
        ("# comment\nwith space.jpg n1\n\n", {"with space.jpg": "n1"}),
        ("stem_only n1\n", {"stem_only": "n1"}),
    ],
)
def test_plain_lists_split_at_the_last_separator(
    tmp_path: Path, text: str, expected: dict[str, str]
) -> None:
    labels = read_labels(write(tmp_path, "val.txt", text))
    assert labels.format == "plain"
    assert {name: row.label for name, row in labels.rows.items()} == expected


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("val.txt", "", "is empty"),
        ("val.txt", "\n  \n# only a comment\n", "is empty"),
        ("val.csv", "", "is empty"),
        ("val.csv", "ImageId,PredictionString\n", "holds only its header"),
        ("val.csv", "id,label\na,n1\n", "line 1: expected the header 'ImageId,PredictionString'"),
        ("val.csv", "a.jpg,n1\n", "expected the header"),
        ("val.csv", "ImageId,PredictionString,Extra\nv1,n1,x\n", "expected the header"),
        ("val.csv", "ImageId,PredictionString\nv1,\n", "line 2: expected 'ImageId,Pred"),
        ("val.csv", "ImageId,PredictionString\nv1\n", "line 2"),
        ("val.csv", "ImageId,PredictionString\n,n1 0 0 1 1\n", "line 2"),
        ("val.csv", "ImageId,PredictionString\nv1,n1\nv1,n2\n", "line 3: a second row for 'v1'"),
        ("val.txt", "a.jpg n1\nlonely\n", "line 2: expected 'filename label'"),
        ("val.txt", "a.jpg n1\n\nb.jpg n2\na.jpg n1\n", "line 4: a second row for 'a.jpg'"),
        ("val.txt", "a.jpg,\n", "line 1"),
        ("val.txt", b"a.jpg n1\nb\xff.jpg n2\n", "expected UTF-8"),
    ],
)
def test_bad_labels_files_raise_one_line_naming_file_and_line(
    tmp_path: Path, name: str, data: str | bytes, match: str
) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(LabelsError, match=match) as info:
        read_labels(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--labels file .* does not exist"):
        read_labels(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="not a file"):
        read_labels(tmp_path)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), csv_name=st.booleans())
def test_any_bytes_parse_or_raise_labels_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, csv_name: bool
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / ("l.csv" if csv_name else "l.txt")
    path.write_bytes(data)
    try:
        labels = read_labels(path)
    except LabelsError as exc:
        assert "\n" not in str(exc)
        return
    assert labels.rows
    for name, row in labels.rows.items():
        assert name == row.name and name.strip() == name and row.label and row.line >= 1
