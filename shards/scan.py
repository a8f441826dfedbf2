"""List a source folder into candidates and skips: class folders, a flat folder, any tree.

``scan_folder`` walks ``root/<class>/<image>``; ``list_flat`` lists the images directly in a
folder (a val set whose labels come from a file, ``shards.source``); ``list_images`` lists every
image under a folder of either layout (the ``--against`` index). A scan only lists and stats: it
never reads image bytes, so it is cheap at 1.28M files. Every entry it does not keep is returned
as a ``Skipped`` with its reason; nothing is dropped silently. Class labels are the sorted names
of the visible class folders, empty ones included, so a train and a val folder with the same
classes get the same labels.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shards.labelreport import LabelReport

__all__ = [
    "IMAGE_SUFFIXES",
    "Candidate",
    "ScanResult",
    "Skipped",
    "list_flat",
    "list_images",
    "scan_folder",
]

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".webp"})


@dataclass(frozen=True)
class Candidate:
    """An image file to shard: ``rel`` is its POSIX path relative to the root."""

    rel: str
    label: int
    size: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class ScanResult:
    root: Path
    classes: list[str]
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    labels: LabelReport | None = None


def scan_folder(root: str | os.PathLike[str]) -> ScanResult:
    """List ``root``'s class folders and their image files, sorted by class then path.

    Class folders and their sub-folders are walked (symlinked folders too, each real folder
    once: a loop is reported, not followed). Hidden entries, non-image extensions, empty
    files, broken links and non-regular files become ``Skipped``. Raises ``FileNotFoundError``
    or ``NotADirectoryError`` for a bad root and ``ValueError`` when it holds no class folder.
    """
    base = _check_root(root, "root/<class>/<image>")
    result = ScanResult(root=base.resolve(), classes=[])
    class_dirs: list[os.DirEntry[str]] = []
    for entry in _sorted_entries(base):
        if entry.name.startswith("."):
            result.skipped.append(Skipped(entry.name, "hidden entry"))
        elif _is_dir(entry):
            class_dirs.append(entry)
        else:
            result.skipped.append(Skipped(entry.name, "not in a class folder"))
    if not class_dirs:
        raise ValueError(
            f"expected class folders in {base} (root/<class>/<image>), found none; for a flat "
            "folder of images give its labels with --labels FILE"
        )
    result.classes = [d.name for d in class_dirs]
    for label, entry in enumerate(class_dirs):
        before = len(result.candidates)
        seen: set[tuple[int, int]] = {_dir_id(base)}
        _walk(Path(entry.path), entry.name, label, result, seen)
        if len(result.candidates) == before:
            result.empty_classes.append(entry.name)
    return result


def _walk(
    folder: Path, rel: str, label: int, result: ScanResult, seen: set[tuple[int, int]]
) -> None:
    ident = _dir_id(folder)
    if ident in seen:
        result.skipped.append(Skipped(rel, "symlink loop: folder already visited"))
        return
    seen.add(ident)
    try:
        entries = _sorted_entries(folder)
    except OSError as exc:
        result.skipped.append(Skipped(rel, f"unreadable folder: {exc.strerror or exc}"))
        return
    for entry in entries:
        path = f"{rel}/{entry.name}"
        found = _examine(entry, path, hidden="hidden file")
        if isinstance(found, Skipped):
            result.skipped.append(found)
        elif found is None:
            _walk(Path(entry.path), path, label, result, seen)
        else:
            result.candidates.append(Candidate(path, label, found))
    seen.discard(ident)


def list_flat(root: str | os.PathLike[str]) -> tuple[list[Candidate], list[Skipped]]:
    """The image files directly in ``root`` as ``Candidate``s of label -1, sorted by name, and
    every other entry as a ``Skipped`` (a sub-folder is not walked: it is reported)."""
    base = _check_root(root, "a folder of images")
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    for entry in _sorted_entries(base):
        found = _examine(entry, entry.name, hidden="hidden entry")
        if isinstance(found, Skipped):
            skipped.append(found)
        elif found is None:
            skipped.append(Skipped(entry.name, "folder in a flat source: only SRC's own files"))
        else:
            candidates.append(Candidate(entry.name, -1, found))
    return candidates, skipped


def list_images(root: str | os.PathLike[str]) -> list[Candidate]:
    """Every image file under ``root`` at any depth (flat or ``root/<class>/<image>``), as
    ``Candidate``s of label -1 sorted by path; what ``scan_folder`` would skip is left out."""
    base = _check_root(root, "a folder of images")
    result = ScanResult(root=base, classes=[])
    _walk(base, "", -1, result, set())
    return [dataclasses.replace(c, rel=c.rel.lstrip("/")) for c in result.candidates]


def _check_root(root: str | os.PathLike[str], layout: str) -> Path:
    base = Path(root)
    if not base.exists():
        raise FileNotFoundError(f"source folder {base} does not exist")
    if not base.is_dir():
        raise NotADirectoryError(f"source {base} is not a folder: expected {layout}")
    return base


def _examine(entry: os.DirEntry[str], path: str, hidden: str) -> Skipped | int | None:
    """One folder entry: its size when it is an image file to keep, None for a folder to walk,
    or why it is skipped."""
    if entry.name.startswith("."):
        return Skipped(path, hidden)
    try:
        st = os.stat(entry.path)
    except OSError as exc:
        reason = "broken symlink" if entry.is_symlink() else f"cannot stat: {exc.strerror}"
        return Skipped(path, reason)
    if stat.S_ISDIR(st.st_mode):
        return None
    if not stat.S_ISREG(st.st_mode):
        return Skipped(path, "not a regular file")
    suffix = os.path.splitext(entry.name)[1]
    if suffix.lower() not in IMAGE_SUFFIXES:
        return Skipped(path, f"not an image file name (extension {suffix or '(none)'})")
    if st.st_size == 0:
        return Skipped(path, "empty file (0 bytes)")
    return st.st_size


def _sorted_entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _dir_id(folder: Path) -> tuple[int, int]:
    st = os.stat(folder)
    return (st.st_dev, st.st_ino)
