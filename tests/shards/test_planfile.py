"""The shared plan: plan once, parts build from it without listing, merge checks the plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shards.build
from shards.build import BuildError, build_shards, merge_build
from shards.plan import SizingOptions, plan_shards
from shards.planfile import PlanError, SavedPlan, SourceChanged, plan_doc, write_plan
from shards.scan import Candidate, ScanResult
from shards.writer import BUILD_DIR
from tests.shards.helpers import file_hashes, jpeg, make_plain, quick_options

PLAN = Path(BUILD_DIR) / "plan.json"


def opts(**kw: Any) -> Any:
    kw.setdefault("sizing", SizingOptions(num_shards=5))
    return quick_options(**kw)


def no_listing(*args: object) -> None:
    raise AssertionError("a part given the plan must not list the source")


def test_plan_once_then_parts_without_listing_equal_one_build(
    quirky: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, out = tmp_path / "whole", tmp_path / "parts"
    build_shards(quirky.root, whole, opts(against=str(quirky.against)))
    summary = build_shards(quirky.root, out, opts(plan_only=True))
    assert summary["shards"] == 5 and len(summary["plan_hash"]) == 64
    assert sorted(p.name for p in out.iterdir()) == [BUILD_DIR]
    assert json.loads((out / PLAN).read_text())["plan_hash"] == summary["plan_hash"]
    # planning again with the same input and options is harmless (a retried planning step)
    assert (
        build_shards(quirky.root, out, opts(plan_only=True))["plan_hash"] == (summary["plan_hash"])
    )
    monkeypatch.setattr(shards.build, "scan_source", no_listing)
    written = 0
    for part in (3, 1, 2):
        done = build_shards(None, out, opts(part=(part, 3)))
        assert done["plan_hash"] == summary["plan_hash"]
        written += done["shards_written"]
    assert written == 5
    merge_build(out, against=str(quirky.against))
    assert file_hashes(out) == file_hashes(whole)


def test_plan_hash_is_the_same_for_the_same_input_and_changes_with_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_plain(src, 12, 3)

    def plan_hash(name: str, **kw: Any) -> str:
        return str(build_shards(src, tmp_path / name, opts(plan_only=True, **kw))["plan_hash"])

    first = plan_hash("a")
    assert plan_hash("b") == first
    assert plan_hash("c", seed=1) != first
    assert plan_hash("d", sizing=SizingOptions(num_shards=4)) != first
    (src / "n00000001" / "img_00001.jpg").write_bytes(jpeg(999, width=17, height=12))
    assert plan_hash("e") != first


def test_an_edited_plan_is_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_plain(src, 8, 2)
    build_shards(src, out, opts(plan_only=True))
    doc = json.loads((out / PLAN).read_text())
    doc["order"][0], doc["order"][1] = doc["order"][1], doc["order"][0]
    (out / PLAN).write_text(json.dumps(doc))
    with pytest.raises(PlanError, match="does not match its own hash"):
        build_shards(None, out, opts(part=(1, 2)))
    (out / PLAN).write_text('{"plan_hash": "x", "candid')
    with pytest.raises(PlanError, match="cannot read the build plan"):
        build_shards(None, out, opts(part=(1, 2)))


@pytest.mark.parametrize("change", ["gone", "resized"])
def test_a_source_changed_after_planning_stops_the_part_naming_the_file(
    tmp_path: Path, change: str
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_plain(src, 12, 3)
    build_shards(src, out, opts(plan_only=True, sizing=SizingOptions(num_shards=2)))
    victim = SavedPlan.load(out / PLAN).candidates[7]
    path = src / victim.rel
    if change == "gone":
        path.unlink()
        match = f"{victim.rel} is gone"
    else:
        path.write_bytes(path.read_bytes() + b"\0")
        match = f"{victim.rel} has {victim.size + 1} bytes, planned {victim.size}"
    failures = []
    for part in (1, 2):
        try:
            build_shards(None, out, opts(part=(part, 2), sizing=SizingOptions(num_shards=2)))
        except SourceChanged as exc:
            failures.append((part, str(exc)))
    assert len(failures) == 1, failures  # only the part holding the file stops
    assert match in failures[0][1] and "\n" not in failures[0][1]
    with pytest.raises(BuildError, match="not built yet"):
        merge_build(out)


def test_merge_names_the_part_built_from_another_plan(tmp_path: Path) -> None:
    src, out, other = tmp_path / "src", tmp_path / "out", tmp_path / "other"
    make_plain(src, 12, 3)
    build_shards(src, out, opts(plan_only=True, sizing=SizingOptions(num_shards=4)))
    build_shards(None, out, opts(part=(1, 2), sizing=SizingOptions(num_shards=4)))
    (src / "n00000000" / "late.jpg").write_bytes(jpeg(77))
    build_shards(src, other, opts(plan_only=True, sizing=SizingOptions(num_shards=4)))
    shutil.copyfile(other / PLAN, out / PLAN)  # the folder was planned again meanwhile
    build_shards(None, out, opts(part=(2, 2), sizing=SizingOptions(num_shards=4)))
    with pytest.raises(PlanError, match=r"part 1/2 \(shard-000000\.tar, shard-000002\.tar\)"):
        merge_build(out)
    assert not (out / "manifest.json").exists()
    build_shards(None, out, opts(part=(1, 2), sizing=SizingOptions(num_shards=4)))
    assert merge_build(out)["samples"] == 13


def test_a_part_with_other_options_than_the_plan_is_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_plain(src, 6, 2)
    build_shards(src, out, opts(plan_only=True))
    with pytest.raises(PlanError, match="seed=3 where the plan has seed=0"):
        build_shards(None, out, opts(part=(1, 2), seed=3))
    assert not list(out.glob("shard-*"))


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=60),
    seed=st.integers(0, 2**31 - 1),
    how=st.sampled_from(["num_shards", "max_samples", "max_bytes"]),
    value=st.integers(1, 20),
)
def test_a_saved_plan_reads_back_as_the_same_shards(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], seed: int, how: str, value: int
) -> None:
    candidates = [Candidate(f"c{i % 3}/f é{i}.jpg", i % 3, s) for i, s in enumerate(sizes)]
    limit = value * 2000 if how == "max_bytes" else value
    plan = plan_shards(candidates, seed, SizingOptions(**{how: limit}))
    scan = ScanResult(Path("/src"), ["c0", "c1", "c2"], candidates)
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    write_plan(path, plan_doc(scan, plan, {"seed": seed}, Path("/src")))
    saved = SavedPlan.load(path)
    assert list(saved.candidates) == candidates and saved.candidates[1:3] == candidates[1:3]
    assert saved.plan.order.tolist() == plan.order.tolist()
    assert [s.tolist() for s in saved.plan.shards] == [s.tolist() for s in plan.shards]
    assert [list(saved.plan.positions(i)) for i in range(len(plan.shards))] == [
        list(plan.positions(i)) for i in range(len(plan.shards))
    ]


@settings(max_examples=8, deadline=None)
@given(num_shards=st.integers(1, 7), parts=st.integers(1, 5), order=st.randoms())
def test_any_parts_in_any_order_write_every_shard_once_with_one_build_s_bytes(
    tmp_path_factory: pytest.TempPathFactory, num_shards: int, parts: int, order: Any
) -> None:
    base = tmp_path_factory.mktemp("k")
    src, whole, out = base / "src", base / "whole", base / "parts"
    make_plain(src, 9, 2)
    sizing = SizingOptions(num_shards=num_shards)
    build_shards(src, whole, opts(sizing=sizing))
    build_shards(src, out, opts(sizing=sizing, plan_only=True))
    indexes = list(range(1, parts + 1))
    order.shuffle(indexes)
    written = [build_shards(None, out, opts(sizing=sizing, part=(i, parts))) for i in indexes]
    assert sum(w["shards_written"] for w in written) == min(num_shards, 9)
    merge_build(out)
    assert file_hashes(out) == file_hashes(whole)
