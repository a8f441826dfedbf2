"""Write-then-rename helpers: a reader sees the old file or the whole new one, never a part.

Durable as well as atomic: the file's bytes are fsynced before the rename, and the folder
after it, so after a power loss a name points at complete bytes or at the old file
(docs/architecture.md, section "Builds").
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["fsync_dir", "replace_durably", "write_bytes_atomic", "write_json_atomic"]


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename in it) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str | os.PathLike[str], path: Path) -> None:
    """Rename the already fsynced ``tmp`` over ``path``, then fsync ``path``'s folder."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` (mode 0644), fsync it, rename it over
    ``path`` and fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """``write_bytes_atomic`` of ``data`` as indented UTF-8 JSON."""
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8", "backslashreplace"))
