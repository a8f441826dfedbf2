"""Walk an ImageNet-style folder (``root/<class>/<image>``) into candidates and skips.

The scan only lists and stats: it never reads image bytes, so it is cheap at 1.28M files.
Every entry it does not keep is returned as a ``Skipped`` with its reason; nothing is dropped
silently. Class labels are the sorted names of the visible class folders, empty ones included,
so a train and a val folder with the same classes get the same labels.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Candidate", "ScanResult", "Skipped", "scan_folder"]

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


def scan_folder(root: str | os.PathLike[str]) -> ScanResult:
    """List ``root``'s class folders and their image files, sorted by class then path.

    Class folders and their sub-folders are walked (symlinked folders too, each real folder
    once: a loop is reported, not followed). Hidden entries, non-image extensions, empty
    files, broken links and non-regular files become ``Skipped``. Raises ``FileNotFoundError``
    or ``NotADirectoryError`` for a bad root and ``ValueError`` when it holds no class folder.
    """
    base = Path(root)
    if not base.exists():
        raise FileNotFoundError(f"source folder {base} does not exist")
    if not base.is_dir():
        raise NotADirectoryError(f"source {base} is not a folder: expected root/<class>/<image>")
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
        raise ValueError(f"expected class folders in {base} (root/<class>/<image>), found none")
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
        if entry.name.startswith("."):
            result.skipped.append(Skipped(path, "hidden file"))
            continue
        try:
            st = os.stat(entry.path)
        except OSError as exc:
            reason = "broken symlink" if entry.is_symlink() else f"cannot stat: {exc.strerror}"
            result.skipped.append(Skipped(path, reason))
            continue
        if stat.S_ISDIR(st.st_mode):
            _walk(Path(entry.path), path, label, result, seen)
        elif not stat.S_ISREG(st.st_mode):
            result.skipped.append(Skipped(path, "not a regular file"))
        elif os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
            suffix = os.path.splitext(entry.name)[1] or "(none)"
            result.skipped.append(Skipped(path, f"not an image file name (extension {suffix})"))
        elif st.st_size == 0:
            result.skipped.append(Skipped(path, "empty file (0 bytes)"))
        else:
            result.candidates.append(Candidate(path, label, st.st_size))
    seen.discard(ident)


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
