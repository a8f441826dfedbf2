"""Tests for ``shardfeed bench`` (loader/cli.py): the real console script on a tiny sample.

Checks the JSON schema and the accounting the benchmark exists to show, not the speeds:
``tar-naive`` delivers every sample once per worker, ``tar-aware``/``map``/``webdataset``/
``litdata`` and the installed ones of ``pil-folder``/``spdl``/``mosaic`` exactly once,
``tar-per-worker`` runs only when workers equal shards. Bad options
are one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loader.bench.modes import MODE_NAMES
from server.cli import main
from shards.build import BuildOptions, build_shards
from shards.plan import SizingOptions
from shards.sample import make_sample

_SCRIPT = Path(sys.executable).parent / "shardfeed"
SHARDFEED = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "server.cli"]
IMAGES, SHARDS = 48, 3
FIGURES = {
    "status", "reason", "storage", "samples", "unique", "duplicates", "missing", "padded",
    "samples_per_s", "samples_per_s_min", "samples_per_s_max", "mb_per_s", "ratio_to_limit",
    "blocked_s", "p50_batch_ms", "p99_batch_ms", "main_cpu_s_per_1k",
    "main_cpu_s_per_1k_unique", "first_batch_s", "epochs", "rounds",
}  # fmt: skip
EPOCH_FIGURES = {
    "epoch", "samples", "unique", "duplicates", "missing", "padded", "samples_per_s",
    "mb_per_s", "ratio_to_limit", "blocked_s", "p50_batch_ms", "p99_batch_ms",
    "main_cpu_s_per_1k", "first_batch_s",
}  # fmt: skip


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    src, out = root / "src", root / "shards"
    make_sample(src, images=IMAGES, classes=3, size="tiny")
    options = BuildOptions(sizing=SizingOptions(num_shards=SHARDS), show_progress=False)
    build_shards(src, out, options)
    return src, out


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHARDFEED, "bench", *args], capture_output=True, text=True, timeout=120)


def run_json(src: Path, out: Path, *args: str) -> dict[str, Any]:
    proc = bench("--folder", str(src), "--shards", str(out), "--json", *args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    doc: dict[str, Any] = json.loads(lines[0])
    return doc


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def litdata_installed() -> bool:
    return installed("litdata")


# The modes users pick instead of ours, each with the package it needs.
USER_MODES = {"pil-folder": "PIL", "spdl": "spdl.pipeline", "mosaic": "streaming"}


def test_json_report_has_every_figure_and_exact_accounting(sample: tuple[Path, Path]) -> None:
    src, out = sample
    doc = run_json(
        src, out, "--modes", "all", "--workers", "2", "--batch-size", "8", "--epochs", "2",
        "--image-size", "16",
    )  # fmt: skip
    assert set(doc) == {"machine", "config", "limit", "modes"}
    machine = doc["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["torch"] and machine["opencv"]
    assert doc["config"]["workers"] == 2 and doc["config"]["modes"] == list(MODE_NAMES)
    limit = doc["limit"]
    users = [m for m, module in USER_MODES.items() if installed(module)]
    # four of the five default modes (tar-per-worker needs as many workers as shards), the
    # transform and eval variants of tar-aware, installed peers (device-bytes needs --decode none)
    ours = ["tar-aware-seeded", "tar-aware-recipe", "tar-aware-eval"]
    ok_modes = 4 + len(ours) + litdata_installed() + len(users)
    assert limit["processes"] == 2 and limit["samples"] == IMAGES
    assert len(limit["runs"]) == ok_modes + 1 and limit["samples_per_s"] > 0
    modes = doc["modes"]
    per_worker = modes["tar-per-worker"]
    assert per_worker["status"] == "not_applicable"
    assert "num_workers=2" in per_worker["reason"] and "3 shards" in per_worker["reason"]
    if not litdata_installed():
        assert modes["litdata"]["status"] == "skipped" and "litdata" in modes["litdata"]["reason"]
    for name in set(USER_MODES) - set(users):
        assert modes[name]["status"] == "skipped" and "not installed" in modes[name]["reason"]
    assert modes["device-bytes"]["status"] == "not_applicable"
    exact = ["map", "tar-aware", "webdataset", *ours]
    exact += ["litdata"] if litdata_installed() else []
    for name in [*exact, *users, "tar-naive"]:
        result = modes[name]
        assert result["status"] == "ok" and result["reason"] is None, (name, result)
        assert FIGURES <= set(result), (name, FIGURES - set(result))
        assert len(result["epochs"]) == 2 and len(result["rounds"]) == 1
        assert result["samples_per_s"] > 0 and result["ratio_to_limit"] > 0
        assert result["ratio_to_limit"] == pytest.approx(
            result["samples_per_s"] / result["limit_samples_per_s"]
        )
        assert isinstance(result["noisy"], bool) and len(result["limit_runs_samples_per_s"]) == 2
        assert (result["noise"] is None) != result["noisy"]
        assert result["p50_batch_ms"] <= result["p99_batch_ms"]
        assert result["main_cpu_s_per_1k"] >= 0 and result["first_batch_s"] > 0
        per_unique = result["main_cpu_s_per_1k_unique"]
        factor = 2 if name == "tar-naive" else 1
        assert per_unique == pytest.approx(factor * result["main_cpu_s_per_1k"], rel=0.01)
        for e, epoch in enumerate(result["epochs"]):
            assert EPOCH_FIGURES <= set(epoch) and epoch["epoch"] == e
            if name == "tar-naive":
                expected = (2 * IMAGES, IMAGES, IMAGES, 0)  # (W - 1) * N duplicates
            else:
                expected = (IMAGES, IMAGES, 0, 0)
            got = (epoch["samples"], epoch["unique"], epoch["duplicates"], epoch["missing"])
            assert got == expected, (name, e, got)
            assert epoch["padded"] == 0
        assert result["duplicates"] == sum(e["duplicates"] for e in result["epochs"])


def test_per_worker_runs_when_workers_equal_shards(sample: tuple[Path, Path]) -> None:
    src, out = sample
    doc = run_json(
        src, out, "--modes", "tar-per-worker,tar-naive", "--workers", "3", "--batch-size", "5",
        "--image-size", "8",
    )  # fmt: skip
    per_worker, naive = doc["modes"]["tar-per-worker"], doc["modes"]["tar-naive"]
    assert per_worker["status"] == "ok"
    assert (per_worker["samples"], per_worker["duplicates"], per_worker["missing"]) == (
        IMAGES, 0, 0,
    )  # fmt: skip
    assert (naive["samples"], naive["duplicates"]) == (3 * IMAGES, 2 * IMAGES)


def test_http_latency_and_decode_none_keep_the_accounting(sample: tuple[Path, Path]) -> None:
    src, out = sample
    modes = ["map", "tar-aware", "webdataset"] + (["litdata"] if litdata_installed() else [])
    doc = run_json(
        src, out, "--modes", ",".join(modes), "--http", "--latency-ms", "1",
        "--decode", "none", "--batch-size", "16", "--repeat", "2",
    )  # fmt: skip
    assert doc["config"]["http"] is True and doc["config"]["decode"] is False
    assert len(doc["limit"]["runs"]) == 2 * (len(modes) + 1)
    for name, result in doc["modes"].items():
        assert result["status"] == "ok", (name, result)
        assert (result["samples"], result["duplicates"], result["missing"]) == (IMAGES, 0, 0)
        assert "HTTP" in result["storage"] and "1 ms" in result["storage"], result["storage"]
        assert len(result["rounds"]) == 2
        assert result["samples_per_s_min"] <= result["samples_per_s"]
        assert result["samples_per_s"] <= result["samples_per_s_max"]


def test_terminal_table_names_every_mode_and_the_limit(
    sample: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = sample
    code = main(
        ["bench", "--folder", str(src), "--shards", str(out), "--modes", "tar-aware,tar-per-worker",
         "--workers", "0", "--batch-size", "16", "--image-size", "8"]
    )  # fmt: skip
    table = capsys.readouterr().out
    assert code == 0
    header, rule, *rows = table.splitlines()
    assert header.split()[:3] == ["mode", "status", "samples"] and set(rule) == {"-"}
    assert "limit/s" in header and "noise" in header.split()
    assert rows[0].split()[:6] == ["tar-aware", "ok", str(IMAGES), str(IMAGES), "0", "0"]
    assert rows[1].split()[:2] == ["tar-per-worker", "not_applicable"]
    assert any(r.startswith("limit: 1 processes") for r in rows)
    assert any(r.startswith("tar-per-worker: not_applicable: ") for r in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "x"], "expected an integer for --workers, got workers='x'"),
        (["--workers", "-1"], "expected workers between 0 and 64, got workers=-1"),
        (["--workers", "100"], "got workers=100"),
        (["--batch-size", "0"], "got batch_size=0"),
        (["--epochs", "1.5"], "expected an integer for --epochs"),
        (["--image-size", "0"], "got image_size=0"),
        (["--latency-ms", "-5"], "got latency_ms=-5.0"),
        (["--latency-ms", "nan"], "got latency_ms=nan"),
        (["--repeat", "0"], "got repeat=0"),
        (["--seed", "-1"], "got seed=-1"),
        (["--decode", "jpeg"], "expected --decode opencv or none, got decode='jpeg'"),
        (["--modes", "map,bogus"], "got mode='bogus'"),
        (["--modes", "map,map"], "expected each mode once"),
        (["--modes", ","], "expected a comma-separated list of modes"),
        (["--folder", "/nonexistent/src"], "expected a source image folder"),
        (["--shards", "http://127.0.0.1:9/m.json", "--http"], "expected a local shard folder"),
    ],
)
def test_bad_options_are_one_line_with_exit_2(
    sample: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    src, out = sample
    code = main(["bench", "--folder", str(src), "--shards", str(out), *args])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardfeed bench: error: "), captured.err
    assert message in lines[0], lines[0]


def test_missing_data_is_one_line_with_exit_2_from_the_script(tmp_path: Path) -> None:
    proc = bench("--shards", str(tmp_path / "none"))
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "expected a shard folder or manifest" in lines[0], proc.stderr
    assert lines[0].startswith("shardfeed bench: error: ")
