"""Tests for shards.cli: ``shardfeed shard|verify|inspect|sample`` as a user runs them.

Most cases call ``server.cli.main`` in-process (the same code the console script runs, without
a ~2 s interpreter start per case); the real console script runs in subprocesses where a
process matters: one-line errors without a traceback, file permissions, and a build killed
with SIGKILL at a random moment and finished with ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from server.cli import main
from shards.build import build_shards
from shards.plan import SizingOptions
from tests.shards.helpers import file_hashes, make_plain, quick_options, run_unprivileged

_SCRIPT = Path(sys.executable).parent / "shardfeed"
SHARDFEED = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "server.cli"]

SHARD_FIELDS = {
    "out", "shards_written", "shards_kept", "images_read", "bytes_read", "elapsed_s",
    "images_per_s", "mb_per_s", "path", "shards", "samples", "samples_per_shard", "classes",
    "empty_classes", "bytes", "skipped", "skipped_by_reason", "duplicate_groups",
    "duplicate_extra_copies", "conflicting_label_groups", "against_matches", "labels",
}  # fmt: skip
INSPECT_FIELDS = (SHARD_FIELDS - {
    "out", "shards_written", "shards_kept", "images_read", "bytes_read", "elapsed_s",
    "images_per_s", "mb_per_s",
}) | {"build", "class_counts"}  # fmt: skip


def shardfeed(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHARDFEED, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``shardfeed ARGS`` in-process; returns a CompletedProcess-like result."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    return run


def assert_one_line_error(proc: subprocess.CompletedProcess[str], match: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("shardfeed shard: error: "), lines[0]
    assert match in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    make_plain(root, 12, 3)
    return root


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing_src", "does not exist"),
        ("src_is_file", "is not a folder"),
        ("out_inside_src", "inside the source"),
        ("out_is_src", "inside the source"),
        ("num_shards_0", "--num-shards"),
        ("num_shards_negative", "--num-shards"),
        ("max_samples_0", "--max-samples"),
        ("max_bytes_0", "--max-bytes"),
        ("out_is_file", "is not a folder"),
        ("out_under_file", "cannot write to output"),
        ("part_0_2", "--part"),
        ("part_3_2", "--part"),
        ("part_x", "--part"),
        ("part_1_0", "--part"),
        ("quality_0", "--quality"),
        ("quality_101", "--quality"),
        ("workers_0", "--workers"),
        ("resize_0", "--resize-max-side"),
        ("out_not_empty", "not empty"),
        ("no_class_folders", "expected class folders"),
        ("no_images", "no image files"),
        ("against_missing", "--against"),
        ("only_out", "expected SRC OUT"),
        ("merge_without_build", "no build plan"),
        ("ray_with_part", "expected --ray with SRC OUT"),
        ("part_without_plan_or_src", "expected SRC OUT"),
    ],
)
def test_bad_arguments_give_one_line_error(
    src: Path, tmp_path: Path, cli: Any, case: str, match: str
) -> None:
    out = str(tmp_path / "out")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    (tmp_path / "flat" / "n1").mkdir(parents=True)
    (tmp_path / "flat" / "n1" / "readme.txt").write_text("x")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "x.jpg").write_bytes(b"\xff\xd8\xff")
    s = str(src)
    args = {
        "missing_src": [str(tmp_path / "nope"), out],
        "src_is_file": [str(tmp_path / "afile"), out],
        "out_inside_src": [s, str(src / "n00000000" / "out")],
        "out_is_src": [s, s],
        "num_shards_0": [s, out, "--num-shards", "0"],
        "num_shards_negative": [s, out, "--num-shards", "-3"],
        "max_samples_0": [s, out, "--max-samples", "0"],
        "max_bytes_0": [s, out, "--max-bytes", "0"],
        "out_is_file": [s, str(tmp_path / "afile")],
        "out_under_file": [s, str(tmp_path / "afile" / "out")],
        "part_0_2": [s, out, "--part", "0/2"],
        "part_3_2": [s, out, "--part", "3/2"],
        "part_x": [s, out, "--part", "x"],
        "part_1_0": [s, out, "--part", "1/0"],
        "quality_0": [s, out, "--resize-max-side", "64", "--quality", "0"],
        "quality_101": [s, out, "--quality", "101"],
        "workers_0": [s, out, "--workers", "0"],
        "resize_0": [s, out, "--resize-max-side", "0"],
        "out_not_empty": [s, str(tmp_path / "full")],
        "no_class_folders": [str(tmp_path / "bare"), out],
        "no_images": [str(tmp_path / "flat"), out],
        "against_missing": [s, out, "--against", str(tmp_path / "nope")],
        "only_out": [out],
        "merge_without_build": ["--merge", str(tmp_path / "full")],
        "ray_with_part": [s, out, "--part", "1/2", "--ray"],
        "part_without_plan_or_src": [out, "--part", "1/2"],
    }[case]
    assert_one_line_error(cli("shard", *args), match)
    assert not list(tmp_path.rglob("shard-*.tar"))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["{tmp}/nope", "{tmp}/out"], "does not exist"),
        (["{src}", "{tmp}/out", "--num-shards", "0"], "--num-shards"),
        (["{src}", "{src}/n00000000/out"], "inside the source"),
    ],
)
def test_console_script_errors_are_one_line_without_traceback(
    src: Path, tmp_path: Path, args: list[str], match: str
) -> None:
    filled = [a.format(tmp=tmp_path, src=src) for a in args]
    assert_one_line_error(shardfeed("shard", *filled), match)


def test_output_under_read_only_folder(src: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = run_unprivileged([*SHARDFEED, "shard", str(src), str(locked / "out")])
    finally:
        locked.chmod(0o755)
    if proc.returncode == 0:
        pytest.skip("this user can write into a 0555 folder")
    assert_one_line_error(proc, "cannot write to output")
    assert "Permission denied" in proc.stderr


def test_rerun_and_resume_errors(src: Path, tmp_path: Path, cli: Any) -> None:
    out = str(tmp_path / "out")
    assert cli("shard", str(src), out, "--num-shards", "2").returncode == 0
    assert_one_line_error(cli("shard", str(src), out, "--num-shards", "2"), "--resume")
    assert_one_line_error(
        cli("shard", str(src), out, "--num-shards", "2", "--resume", "--seed", "9"),
        "other input or options",
    )


def test_shard_and_inspect_json_print_one_document(src: Path, tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "out"
    proc = cli("shard", str(src), str(out), "--num-shards", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1
    doc = json.loads(proc.stdout)
    assert set(doc) == SHARD_FIELDS
    assert (doc["shards"], doc["samples"], doc["classes"], doc["skipped"]) == (3, 12, 3, 0)
    assert doc["shards_written"] == 3 and doc["images_read"] == 12
    assert doc["bytes"] == sum(p.stat().st_size for p in out.glob("shard-*.tar"))

    proc = cli("inspect", str(out), "--json")
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1, proc.stderr
    info = json.loads(proc.stdout)
    assert set(info) == INSPECT_FIELDS
    assert {k: info[k] for k in INSPECT_FIELDS - {"build", "class_counts"}} == {
        k: doc[k] for k in INSPECT_FIELDS - {"build", "class_counts"}
    }
    assert info["build"]["seed"] == 0 and info["labels"] is None
    assert info["class_counts"] == {f"n{k:08d}": 4 for k in range(3)}

    proc = cli("inspect", str(out))
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["samples", "12"] for line in lines)
    table = lines.index("per class (3): label  name  samples")
    assert [line.split() for line in lines[table + 1 :]] == [
        [str(k), f"n{k:08d}", "4"] for k in range(3)
    ]


def test_verify_exit_codes_and_named_shard(src: Path, tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "out"
    assert cli("shard", str(src), str(out), "--num-shards", "2").returncode == 0
    proc = shardfeed("verify", str(out))
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr
    data = bytearray((out / "shard-000001.tar").read_bytes())
    data[700] ^= 0xFF
    (out / "shard-000001.tar").write_bytes(bytes(data))
    proc = shardfeed("verify", str(out))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() and all(
        line.startswith("shard-000001.tar: ") for line in proc.stdout.splitlines()
    )
    assert "Traceback" not in proc.stderr


def test_part_builds_then_merge(src: Path, tmp_path: Path, cli: Any) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = ["--num-shards", "3", "--seed", "4"]
    assert cli("shard", str(src), str(whole), *common).returncode == 0
    for part in ("2/3", "3/3"):
        proc = cli("shard", str(src), str(parts), *common, "--part", part, "--json")
        assert proc.returncode == 0 and json.loads(proc.stdout)["part"] == part, proc.stderr
    proc = cli("shard", "--merge", str(parts))
    assert_one_line_error(proc, "shard-000000.tar")
    assert cli("shard", str(src), str(parts), *common, "--part", "1/3").returncode == 0
    proc = cli("shard", "--merge", str(parts), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["samples"] == 12, proc.stderr
    assert file_hashes(parts) == file_hashes(whole)


def test_sample_then_shard_then_verify(tmp_path: Path, cli: Any) -> None:
    folder, out = tmp_path / "sample", tmp_path / "out"
    proc = cli(
        "sample", str(folder), "--images", "24", "--classes", "3", "--size", "tiny", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    proc = cli("shard", str(folder), str(out), "--num-shards", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["samples"], doc["classes"], doc["skipped"]) == (24, 3, 0)
    assert cli("verify", str(out)).returncode == 0


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _run_and_kill(args: list[str], out: Path, rng: random.Random, seen: dict[str, set[str]]) -> int:
    """Start a build, watch its shards appear, SIGKILL its process group after a random number
    of finished shards plus a random delay; returns how many shards existed at the kill."""
    target = rng.randint(1, 28)
    proc = subprocess.Popen(
        [*SHARDFEED, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    count = 0
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            tars = sorted(out.glob("shard-*.tar")) if out.is_dir() else []
            for tar in tars:
                sha = _sha(tar)
                if sha is not None:
                    seen[tar.name].add(sha)
            count = len(tars)
            if count >= target:
                time.sleep(rng.uniform(0, 0.03))
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return count


def test_killed_build_resumes_to_the_same_bytes(tmp_path: Path, cli: Any) -> None:
    src, ref, out = tmp_path / "src", tmp_path / "ref", tmp_path / "out"
    make_plain(src, 300, 6)
    build_shards(src, ref, quick_options(sizing=SizingOptions(max_samples=10)))
    final = file_hashes(ref)
    assert sum(name.endswith(".tar") for name in final) == 30

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    seen: dict[str, set[str]] = defaultdict(set)
    args = ["shard", str(src), str(out), "--max-samples", "10", "--workers", "2"]
    kills = [_run_and_kill(args, out, rng, seen)]
    assert_one_line_error(cli(*args), "pass --resume")
    assert_one_line_error(cli(*args, "--resume", "--seed", "1"), "other input or options")
    kills.append(_run_and_kill([*args, "--resume"], out, rng, seen))
    for tar in out.glob("shard-*.tar"):
        seen[tar.name].add(str(_sha(tar)))
    partial = {name: shas for name, shas in seen.items() if shas != {final[name]}}
    assert not partial, f"partial shards seen (random seed {seed}, kills at {kills}): {partial}"

    proc = cli(*args, "--resume", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["shards_kept"] + summary["shards_written"] == 30
    assert file_hashes(out) == final, f"random seed {seed}, kills at {kills}"
    assert not [p for p in out.rglob("*.tmp")]
    assert cli("verify", str(out)).returncode == 0


def test_plan_only_then_parts_from_the_plan_then_merge(src: Path, tmp_path: Path, cli: Any) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli("shard", str(src), str(whole), "--num-shards", "3", "--seed", "4").returncode == 0
    proc = cli("shard", str(src), str(parts), "--num-shards", "3", "--seed", "4", "--plan-only",
               "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plan_hash = json.loads(proc.stdout)["plan_hash"]
    assert not list(parts.glob("shard-*"))
    assert_one_line_error(
        cli("shard", str(parts), "--part", "1/2", "--seed", "5"),
        "seed=5 where the plan has seed=4",
    )
    for part in ("1/2", "2/2"):  # no SRC, no sizing: both come from the plan
        proc = cli("shard", str(parts), "--part", part, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["plan_hash"] == plan_hash
    assert cli("shard", "--merge", str(parts)).returncode == 0
    assert file_hashes(parts) == file_hashes(whole)


def test_a_changed_source_stops_the_part_with_one_line(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = shardfeed("shard", str(src), str(out), "--num-shards", "1", "--plan-only")
    assert proc.returncode == 0, proc.stderr
    (src / "n00000002" / "img_00005.jpg").unlink()
    proc = shardfeed("shard", str(out), "--part", "1/1")
    assert_one_line_error(proc, "n00000002/img_00005.jpg is gone")
    assert not list(out.glob("shard-*"))
