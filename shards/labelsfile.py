"""Read a labels file: ImageNet's ``LOC_val_solution.csv`` or a plain ``filename label`` list.

Two formats, told apart by the file: a name ending in ``.csv``, or a first line starting with
``ImageId,``, is ImageNet's CSV, whose header must be ``ImageId,PredictionString`` and whose
class is the first token of ``PredictionString`` (``ImageId`` is the file stem); anything else
is a plain list, one ``filename label`` per line, separated by a tab, else a comma, else
spaces (the last separator on the line, so file names may hold spaces), ``#`` starting a
comment. A row names an image by its file name or its stem; the label is a class name.

Promises: every row is kept with its line number, in file order; a file that is empty, not
UTF-8, has the wrong CSV header, a malformed row or two rows for one name raises
``LabelsError`` naming the file and the line. Nothing here looks at the images.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shards.labelreport import LabelsError

__all__ = ["CSV_HEADER", "LabelRow", "LabelsFile", "read_labels"]

CSV_HEADER: Final = ("ImageId", "PredictionString")
_FORMATS_HINT: Final = (
    "expected ImageNet's LOC_val_solution.csv (header ImageId,PredictionString) "
    "or one 'filename label' per line"
)


@dataclass(frozen=True)
class LabelRow:
    name: str
    label: str
    line: int


@dataclass(frozen=True)
class LabelsFile:
    """``rows`` maps each row's name (as written) to its row, in file order."""

    path: Path
    format: str
    rows: dict[str, LabelRow]


def read_labels(path: str | os.PathLike[str]) -> LabelsFile:
    """Parse the labels file at ``path``; ``FileNotFoundError`` when there is none,
    ``LabelsError`` (one line, naming the file and line) for a file that cannot be used."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--labels file {file} does not exist or is not a file")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(
            f"--labels {file}: expected UTF-8 text, got an undecodable byte at offset "
            f"{exc.start}; save the file as UTF-8"
        ) from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise LabelsError(f"--labels {file} is empty: {_FORMATS_HINT}")
    if file.suffix.lower() == ".csv" or lines[0][1].startswith("ImageId,"):
        return LabelsFile(file, "imagenet-csv", _csv_rows(file, lines))
    return LabelsFile(file, "plain", _plain_rows(file, lines))


def _csv_rows(file: Path, lines: list[tuple[int, str]]) -> dict[str, LabelRow]:
    number, header = lines[0]
    if tuple(f.strip() for f in _fields(header)) != CSV_HEADER:
        raise LabelsError(
            f"--labels {file} line {number}: expected the header "
            f"'{','.join(CSV_HEADER)}' (ImageNet's LOC_val_solution.csv), got {header!r}; "
            "a plain 'filename label' list needs a name not ending in .csv"
        )
    if len(lines) == 1:
        raise LabelsError(f"--labels {file} holds only its header: expected one row per image")
    rows: dict[str, LabelRow] = {}
    for number, line in lines[1:]:
        fields = [f.strip() for f in _fields(line)]
        tokens = fields[1].split() if len(fields) == 2 else []
        if not tokens or not fields[0]:
            raise LabelsError(
                f"--labels {file} line {number}: expected 'ImageId,PredictionString' with a "
                f"class first in PredictionString, got {line!r}"
            )
        _add(rows, LabelRow(fields[0], tokens[0], number), file)
    return rows


def _plain_rows(file: Path, lines: list[tuple[int, str]]) -> dict[str, LabelRow]:
    rows: dict[str, LabelRow] = {}
    for number, line in lines:
        sep = "\t" if "\t" in line else "," if "," in line else None
        parts = [p.strip() for p in line.rsplit(sep, 1)]
        if len(parts) != 2 or not all(parts):
            raise LabelsError(
                f"--labels {file} line {number}: expected 'filename label' (a tab, a comma or "
                f"spaces between), got {line!r}"
            )
        _add(rows, LabelRow(parts[0], parts[1], number), file)
    return rows


def _fields(line: str) -> list[str]:
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return []


def _add(rows: dict[str, LabelRow], row: LabelRow, file: Path) -> None:
    first = rows.get(row.name)
    if first is not None:
        raise LabelsError(
            f"--labels {file} line {row.line}: a second row for {row.name!r} (the first is "
            f"line {first.line}); keep one row per image"
        )
    rows[row.name] = row
