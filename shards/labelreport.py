"""What labelling a source left out: images without a label, labels outside the class list,
labels-file rows without an image, class folders outside the list (docs/architecture.md,
"Format").

A ``LabelReport`` is made by the scan (``shards.source``) of a build given ``--labels`` or
``--classes-from``; its ``to_dict`` form is stored in the build plan and copied into the
manifest's ``labels``, so the summary, ``inspect`` and ``--strict`` all read the same counts.
The images it names are also in the build's ``skipped``, each with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["FIRST", "LabelReport", "LabelsError", "check_strict", "problems"]

FIRST: Final = 5
_KINDS: Final = (
    ("images_without_label", "image(s) without a label"),
    ("images_with_unknown_class", "image(s) with a class outside the class list"),
    ("rows_without_image", "labels-file row(s) without an image"),
    ("class_folders_not_in_list", "class folder(s) not in the class list"),
)


class LabelsError(ValueError):
    """A labels file or class list that cannot label the source; the message is one line
    naming the file, the line or the image, and what to do."""


@dataclass
class LabelReport:
    """Names in source order (file names, ``name (class)`` for an unknown class, row names as
    the labels file writes them, class folder names)."""

    labels_file: str | None
    classes_from: str | None
    images_without_label: list[str] = field(default_factory=list)
    images_with_unknown_class: list[str] = field(default_factory=list)
    rows_without_image: list[str] = field(default_factory=list)
    class_folders_not_in_list: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """``{"labels_file", "classes_from", KIND: {"count": n, "first": [up to FIRST names]}}``."""
        doc: dict[str, Any] = {"labels_file": self.labels_file, "classes_from": self.classes_from}
        for kind, _ in _KINDS:
            names: list[str] = getattr(self, kind)
            doc[kind] = {"count": len(names), "first": names[:FIRST]}
        return doc


def problems(doc: dict[str, Any] | None) -> list[str]:
    """One phrase per kind of problem in a ``LabelReport.to_dict`` document, with the first
    names: ``"2 image(s) without a label (a.JPEG, b.JPEG)"``; empty when there is none."""
    if not doc:
        return []
    found = []
    for kind, words in _KINDS:
        entry = doc.get(kind) or {"count": 0, "first": []}
        if entry["count"]:
            more = ", ..." if entry["count"] > len(entry["first"]) else ""
            found.append(f"{entry['count']} {words} ({', '.join(entry['first'])}{more})")
    return found


def check_strict(doc: dict[str, Any] | None) -> None:
    """``LabelsError`` (one line) when the report of a ``--strict`` build has any problem."""
    found = problems(doc)
    if found:
        raise LabelsError(
            "--strict: expected every image labelled from the class list and every labels-file "
            f"row to name an image, got {'; '.join(found)}; fix the labels file or the class "
            "list, or leave out --strict to build the labelled images and report the rest"
        )
