"""What a build's SRC holds and which integer labels its images get.

Three shapes (docs/architecture.md, "Data flow"):

- class folders, ``root/<class>/<image>``: labels are the sorted class folder names
  (``shards.scan``);
- a flat folder plus ``--labels FILE`` (``shards.labelsfile``): each image named by a row gets
  that row's class; the class list is the sorted classes of every row, rows without an image
  included, so a val subset keeps the labels of the whole set;
- either of them with ``--classes-from MANIFEST``: the class list, and so every integer label,
  is that of an earlier build (the train shards), whatever classes this source lacks or in
  whatever order it lists them.

Promises: the result depends only on the folder listing and the two files, never on the
order files were created, so every ``--part`` of a build computes the same plan. Nothing is
dropped silently: an image without a label or with a class outside the list is a ``Skipped``
with its reason, and the ``LabelReport`` counts those, the rows without an image and the class
folders outside the list. A labels file that matches no image at all is an error.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from shards.labelreport import LabelReport, LabelsError
from shards.labelsfile import LabelRow, LabelsFile, read_labels
from shards.manifest import Manifest, ManifestError
from shards.scan import Candidate, ScanResult, Skipped, list_flat, scan_folder

__all__ = ["read_class_list", "scan_source"]


def scan_source(
    root: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    classes_from: str | os.PathLike[str] | None = None,
) -> ScanResult:
    """Scan ``root`` as class folders, or as a flat folder labelled by ``labels``; with
    ``classes_from``, label with that build's class list. ``scan.labels`` holds the report
    whenever ``labels`` or ``classes_from`` is given."""
    if labels is None and classes_from is None:
        return scan_folder(root)
    classes = None if classes_from is None else read_class_list(classes_from)
    origin = None if classes_from is None else str(Path(classes_from).resolve())
    if labels is not None:
        return _scan_labelled(Path(root), read_labels(labels), classes, origin)
    assert classes is not None
    return _apply_class_list(scan_folder(root), classes, origin)


def read_class_list(path: str | os.PathLike[str]) -> list[str]:
    """The ``classes`` of the manifest at ``path`` (a ``manifest.json`` or a folder holding
    one), in label order; ``LabelsError`` when it has none, or a class twice."""
    try:
        manifest = Manifest.load(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--classes-from: {exc}") from None
    except ManifestError as exc:
        raise LabelsError(f"--classes-from: {exc}") from None
    classes = manifest.classes
    bad = next((c for c in classes if not isinstance(c, str) or not c), None)
    if not classes or bad is not None:
        raise LabelsError(
            f"--classes-from {path}: expected a non-empty list of class names in 'classes', got "
            f"{bad!r} in {len(classes)} class(es); give the manifest of a shardfeed build"
        )
    seen: set[str] = set()
    for name in classes:
        if name in seen:
            raise LabelsError(
                f"--classes-from {path}: expected each class once in 'classes', got {name!r} "
                "twice; give the manifest of a shardfeed build"
            )
        seen.add(name)
    return list(classes)


def _scan_labelled(
    root: Path, file: LabelsFile, classes: list[str] | None, origin: str | None
) -> ScanResult:
    images, skipped = list_flat(root)
    rows = file.rows
    if classes is None:
        classes = sorted({row.label for row in rows.values()})
    index = {name: i for i, name in enumerate(classes)}
    report = LabelReport(str(file.path.resolve()), origin)
    used: dict[str, str] = {}
    kept: list[Candidate] = []
    for image in images:
        row = _row_of(image.rel, rows, file)
        if row is None:
            report.images_without_label.append(image.rel)
            skipped.append(Skipped(image.rel, f"no label: not named in {file.path.name}"))
            continue
        if row.name in used:
            raise LabelsError(
                f"--labels {file.path} line {row.line}: row {row.name!r} names two images, "
                f"{used[row.name]!r} and {image.rel!r}; name each image by its file name"
            )
        used[row.name] = image.rel
        label = index.get(row.label)
        if label is None:
            report.images_with_unknown_class.append(f"{image.rel} ({row.label})")
            skipped.append(
                Skipped(image.rel, f"class not in the class list: {row.label!r} (line {row.line})")
            )
            continue
        kept.append(replace(image, label=label))
    report.rows_without_image = [name for name in rows if name not in used]
    if not used:
        folders = any(s.reason.startswith("folder in a flat source") for s in skipped)
        hint = "; SRC holds folders: for root/<class>/<image> leave out --labels" if folders else ""
        raise LabelsError(
            f"expected image files in {root} named by the rows of {file.path}, got none of its "
            f"{len(rows)} row(s) matching the {len(images)} image file(s) there{hint}"
        )
    return _result(root, classes, kept, skipped, report)


def _row_of(rel: str, rows: dict[str, LabelRow], file: LabelsFile) -> LabelRow | None:
    """The row naming image ``rel``, by file name or by stem; two rows naming it is an error."""
    stem = os.path.splitext(rel)[0]
    named = [r for r in (rows.get(rel), rows.get(stem) if stem != rel else None) if r]
    if len(named) == 2:
        raise LabelsError(
            f"--labels {file.path}: two rows for image {rel!r}, line {named[0].line} "
            f"({named[0].name!r}) and line {named[1].line} ({named[1].name!r}); keep one"
        )
    return named[0] if named else None


def _apply_class_list(scan: ScanResult, classes: list[str], origin: str | None) -> ScanResult:
    index = {name: i for i, name in enumerate(classes)}
    report = LabelReport(None, origin)
    report.class_folders_not_in_list = [name for name in scan.classes if name not in index]
    kept: list[Candidate] = []
    skipped = list(scan.skipped)
    for cand in scan.candidates:
        folder = scan.classes[cand.label]
        label = index.get(folder)
        if label is None:
            report.images_with_unknown_class.append(f"{cand.rel} ({folder})")
            skipped.append(
                Skipped(cand.rel, f"class not in the class list: {folder!r} (class folder)")
            )
        else:
            kept.append(replace(cand, label=label))
    return _result(scan.root, classes, kept, skipped, report)


def _result(
    root: Path,
    classes: list[str],
    kept: list[Candidate],
    skipped: list[Skipped],
    report: LabelReport,
) -> ScanResult:
    present = {c.label for c in kept}
    empty = [name for i, name in enumerate(classes) if i not in present]
    return ScanResult(root.resolve(), list(classes), kept, skipped, empty, report)
