"""The one validation of ``manifest.json`` documents, local or remote (docs/architecture.md,
"Format"): JSON text in, checked plain values out, or ``ManifestError`` naming the field and the
value it holds. Never a traceback: not for a top-level list, ``null`` or a string where a list
belongs, a boolean or a float where a count belongs, NaN, ``1e999``, an integer too long to
parse, or nesting deeper than the JSON parser's recursion limit.

Types are strict (``nsamples: true`` is not 1, ``classes: "abcd"`` is not four classes).
Fields this model does not know are accepted and ignored, as wids readers do.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

__all__ = [
    "FORMAT_VERSION",
    "WIDS_KIND",
    "ManifestError",
    "ManifestModel",
    "parse_manifest",
    "validate_manifest",
]

WIDS_KIND = "wids-shard-index-v1"
FORMAT_VERSION = 1
_MAX_INT = 1 << 62  # counts, sizes and ids stay far inside int64 when summed
_SHOWN = 80
_TO_DO = "fix the manifest or rebuild it with 'shardfeed shard'"

Count = Annotated[int, Field(ge=0, le=_MAX_INT)]
Hex = Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{64})?$")]
Text = Annotated[str, StringConstraints(min_length=1)]


class ManifestError(ValueError):
    """A manifest that is missing, malformed or inconsistent; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class EntryModel(_Strict):
    """One ``shardlist`` item."""

    url: Text
    nsamples: Count
    filesize: Annotated[int, Field(ge=-1, le=_MAX_INT)] | None = None
    sha256: Hex | None = None
    first_index: Count | None = None
    index_url: Text | None = None
    index_sha256: Hex | None = None


class SkippedModel(_Strict):
    """One file the build skipped, and why."""

    path: str
    reason: str


class ManifestModel(_Strict):
    """The whole document; ``duplicates`` and ``build`` are free-form reports."""

    kind: Literal["wids-shard-index-v1"] = Field(alias="__kind__")
    shardlist: Annotated[list[EntryModel], Field(min_length=1)]
    classes: list[str] = []
    name: str = "shardfeed"
    num_samples: Count | None = None
    skipped: list[SkippedModel] = []
    empty_classes: list[str] = []
    duplicates: dict[str, Any] = {}
    build: dict[str, Any] = {}
    class_counts: list[Count] | None = None
    labels: dict[str, Any] | None = None


def parse_manifest(text: str | bytes, source: str) -> ManifestModel:
    """Parse and validate a manifest's JSON text; ``source`` names it in every error."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ManifestError(
            f"{source}: expected a manifest, got JSON nested too deeply to parse"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, int digit limit
        raise ManifestError(f"{source}: not valid JSON ({_one_line(str(exc))})") from None
    return validate_manifest(data, source)


def validate_manifest(data: Any, source: str) -> ManifestModel:
    """Validate an already parsed document (see ``parse_manifest``)."""
    if not isinstance(data, dict):
        raise ManifestError(
            f"{source}: expected a JSON object at the top level, got {type(data).__name__}; "
            "is this a manifest.json?"
        )
    try:
        return ManifestModel.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source}: {_describe(exc)}") from None
    except RecursionError:
        raise ManifestError(
            f"{source}: expected a manifest, got values nested too deeply"
        ) from None


def _describe(exc: ValidationError) -> str:
    """The first problem as "expected X, got field=value", plus what to do."""
    error = exc.errors(include_url=False)[0]
    field = _path(error["loc"])
    message = error["msg"]
    if error["type"] == "missing":
        return f"expected a field {field!r}, got none; {_TO_DO}"
    if message.startswith("Input should be "):
        message = message.removeprefix("Input should be ")
        expectation = f"{field} to be {message}"
    else:
        expectation = f"{field} to satisfy: {message[:1].lower()}{message[1:]}"
    shown = _one_line(repr(error["input"]))
    if len(shown) > _SHOWN:
        shown = shown[: _SHOWN - 3] + "..."
    return f"expected {expectation}, got {field}={shown}; {_TO_DO}"


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the document"


def _one_line(text: str) -> str:
    return " ".join(text.split())
