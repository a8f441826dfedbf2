"""Tests for shards.manifest and its one validation (shards._manifest_schema): every badly typed
or inconsistent manifest is a ``ManifestError`` naming the field and value, never a traceback;
unknown fields are accepted; a shard listed twice is refused; ``verify`` and ``inspect`` give a
one-line error."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from shards.manifest import Manifest, ManifestError, ShardEntry
from shards.verify import inspect_build

SHA_A, SHA_B = "a" * 64, "b" * 64
GOOD: dict[str, Any] = {
    "__kind__": "wids-shard-index-v1",
    "wids_version": 1,
    "name": "t",
    "shardfeed_format": 1,
    "shardlist": [
        {"url": "shard-000000.tar", "nsamples": 2, "filesize": 9216, "sha256": SHA_A,
         "first_index": 0, "index_url": "shard-000000.idx.npy", "index_sha256": SHA_B},
        {"url": "shard-000001.tar", "nsamples": 3, "filesize": 12288, "sha256": SHA_B,
         "first_index": 2},
    ],
    "classes": ["cat", "dog"],
    "num_samples": 5,
    "skipped": [{"path": "cat/x.jpg", "reason": "truncated"}],
    "duplicates": {"exact_groups": 0},
    "build": {"seed": 0},
}  # fmt: skip


def _with_doc(doc: Any, path: str, value: Any) -> Any:
    """``doc`` with the field at dotted ``path`` set to ``value`` (in place)."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = doc
    for part in parents:
        target = target[part]
    target[last] = value
    return doc


def _with(path: str, value: Any) -> dict[str, Any]:
    """``GOOD`` with the field at dotted ``path`` (list items by number) set to ``value``."""
    return _with_doc(copy.deepcopy(GOOD), path, value)


def test_the_good_manifest_round_trips() -> None:
    manifest = Manifest.from_json(json.dumps(GOOD), source="m.json")
    assert manifest.num_samples == 5 and manifest.classes == ["cat", "dog"]
    assert manifest.shards[1] == ShardEntry("shard-000001.tar", 3, 12288, SHA_B, 2)
    assert Manifest.from_dict(manifest.to_dict()) == manifest


def test_unknown_fields_and_wids_minimal_entries_are_accepted() -> None:
    doc = _with("shardlist", [{"url": "a.tar", "nsamples": 4, "wids_extra": [1, {"x": None}]}])
    doc.update(num_samples=4, future_field={"deep": [math.nan, 1e300]}, wids_version=7)
    del doc["classes"]
    manifest = Manifest.from_dict(doc)
    assert manifest.shards == [ShardEntry("a.tar", 4, -1, "", 0)]
    assert manifest.classes == []
    nulls = _with("shardlist.1.sha256", None) | {"num_samples": None}
    assert Manifest.from_dict(nulls).shards[1].sha256 == ""


BAD: list[tuple[str, Any, str]] = [
    ("classes", None, r"classes to be a valid list, got classes=None"),
    ("classes", "abcd", r"classes to be a valid list, got classes='abcd'"),
    ("classes", ["a", 3], r"classes\[1\] to be a valid string, got classes\[1\]=3"),
    ("shardlist", {"url": "a"}, r"shardlist to be a valid list"),
    ("shardlist", [], r"shardlist to satisfy: list should have at least 1 item"),
    ("shardlist.0.nsamples", True, r"shardlist\[0\]\.nsamples to be a valid integer.*=True"),
    ("shardlist.0.nsamples", 2.0, r"shardlist\[0\]\.nsamples to be a valid integer.*=2\.0"),
    ("shardlist.0.nsamples", -1, r"shardlist\[0\]\.nsamples to be greater than or equal to 0"),
    ("shardlist.0.nsamples", 10**30, r"shardlist\[0\]\.nsamples to be less than or equal"),
    ("shardlist.0.nsamples", "2", r"shardlist\[0\]\.nsamples to be a valid integer.*='2'"),
    ("shardlist.0.filesize", "abc", r"shardlist\[0\]\.filesize to be a valid integer.*='abc'"),
    ("shardlist.0.filesize", math.nan, r"shardlist\[0\]\.filesize to be a valid integer.*=nan"),
    ("shardlist.0.filesize", math.inf, r"shardlist\[0\]\.filesize to be a valid integer.*=inf"),
    ("shardlist.0.url", 7, r"shardlist\[0\]\.url to be a valid string, got shardlist\[0\]\.url=7"),
    ("shardlist.0.url", "", r"shardlist\[0\]\.url to satisfy: string should have at least 1"),
    ("shardlist.0.sha256", "xyz", r"shardlist\[0\]\.sha256 to satisfy: string should match"),
    ("shardlist.0.index_url", ["a"], r"shardlist\[0\]\.index_url to be a valid string"),
    ("shardlist.1.first_index", 5, r"shardlist\[1\]\.first_index expected 2, got 5"),
    ("shardlist.1", "shard.tar", r"shardlist\[1\] to be a valid dictionary"),
    ("num_samples", 6, r"num_samples=6 but the shardlist sums to 5"),
    ("num_samples", False, r"num_samples to be a valid integer, got num_samples=False"),
    ("__kind__", "other", r"__kind__ to be 'wids-shard-index-v1', got __kind__='other'"),
    ("name", None, r"name to be a valid string, got name=None"),
    ("skipped", [{"path": "a"}], r"expected a field 'skipped\[0\]\.reason', got none"),
    ("duplicates", [], r"duplicates to be a valid dictionary"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_badly_typed_fields_are_named_with_their_value(path: str, value: Any, message: str) -> None:
    text = json.dumps(_with(path, value))
    with pytest.raises(ManifestError, match=r"^m\.json: .*" + message) as info:
        Manifest.from_json(text, source="m.json")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected a JSON object at the top level, got list"),
        ("null", "expected a JSON object at the top level, got NoneType"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
        ("{not json", "not valid JSON"),
        ('{"num_samples": ' + "9" * 5000 + "}", "not valid JSON"),
        (b"\xff\xfe{", "not valid JSON"),
    ],
    ids=["list", "null", "deep-list", "deep-object", "syntax", "long-int", "bytes"],
)
def test_documents_that_are_not_manifests(text: str | bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=r"^m\.json: .*" + message):
        Manifest.from_json(text, source="m.json")


@pytest.mark.parametrize(
    ("change", "repeated"),
    [
        (("shardlist.1.url", "shard-000000.tar"), "url=shard-000000.tar"),
        (("shardlist.1.sha256", SHA_A), f"sha256={SHA_A}"),
    ],
)
def test_a_shard_listed_twice_is_refused(change: tuple[str, Any], repeated: str) -> None:
    with pytest.raises(ManifestError, match=f"got {repeated} twice"):
        Manifest.from_dict(_with(*change), source="m.json")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (json.dumps(_with("classes", None)), "classes=None"),
        (json.dumps(_with("shardlist.0.filesize", math.nan)), r"shardlist[0].filesize=nan"),
        (json.dumps(_with("shardlist.1.url", "shard-000000.tar")), "url=shard-000000.tar twice"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("[]", "expected a JSON object"),
    ],
    ids=["null-classes", "nan", "repeated", "deep", "list"],
)
def test_verify_and_inspect_give_one_line_errors(tmp_path: Path, text: str, named: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    for command in ("verify", "inspect"):
        done = _cli(command, str(tmp_path))
        assert done.returncode != 0
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"shardfeed {command}: error: ") and named in done.stderr


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["wids-shard-index-v1", "a.tar", SHA_A]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
fields = st.sampled_from(
    ["__kind__", "shardlist", "classes", "num_samples", "name", "skipped", "build", "other",
     "shardlist.0", "shardlist.0.url", "shardlist.0.nsamples", "shardlist.0.filesize",
     "shardlist.0.sha256", "shardlist.0.first_index", "shardlist.1.index_url",
     "shardlist.1.index_sha256", "shardlist.1.url", "duplicates", "skipped.0.reason",
     "duplicates.against", "duplicates.exact_groups"]
)  # fmt: skip


@seed(20261203)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(fields, json_values), max_size=3), whole=json_values)
def test_fuzzed_manifests_parse_or_raise_our_error(
    edits: list[tuple[str, Any]], whole: Any
) -> None:
    """Any JSON document, or the good manifest with any fields replaced by any JSON values, is a
    ``Manifest`` or a one-line ``ManifestError`` naming the source."""
    docs: list[Any] = [whole]
    doc: Any = copy.deepcopy(GOOD)
    for path, value in edits:
        try:
            doc = _with_doc(doc, path, value)
        except (KeyError, IndexError, TypeError):
            continue
    docs.append(doc)
    for candidate in docs:
        text = json.dumps(candidate)
        try:
            manifest = Manifest.from_json(text, source="fuzz.json")
        except ManifestError as exc:
            assert str(exc).startswith("fuzz.json: ") and "\n" not in str(exc)
            continue
        assert manifest.num_samples == sum(s.nsamples for s in manifest.shards) >= 0
        assert Manifest.from_dict(manifest.to_dict()) == manifest
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "manifest.json").write_text(text)
            assert inspect_build(folder)["samples"] == manifest.num_samples


@pytest.mark.parametrize("against", [[], "x", None, {"matches": 3}])
def test_inspect_reads_free_form_reports_without_a_traceback(tmp_path: Path, against: Any) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(_with("duplicates.against", against)))
    expected = 3 if isinstance(against, dict) else None
    assert inspect_build(tmp_path)["against_matches"] == expected
