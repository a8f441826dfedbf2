"""``shardfeed demo`` end to end: sample → shard → bench through the service → live training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import CHROMEDRIVER, CHROMIUM, child_env

DEMO_ARGS = ["--images", "48", "--classes", "4", "--size", "tiny", "--train-epochs", "1",
             "--batch-size", "8", "--latency-ms", "2"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_no_serve_does_the_whole_tour(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "demo",
            "--no-serve",
            "--json",
            "--port",
            "0",
            "--dir",
            str(tmp_path / "demo"),
            *DEMO_ARGS,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=400,
        env=child_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    runs = list(summary["benchmarks"].values())
    assert [r["status"] for r in runs] == ["done", "done"]
    assert [r["result"]["config"]["latency_ms"] for r in runs] == [0.0, 2.0]
    for run in runs:
        modes = run["result"]["modes"]
        assert modes["tar-naive"]["duplicates"] == 48  # 2 workers: (2 - 1) * 48
        for mode in ("tar-aware", "map"):
            assert (modes[mode]["duplicates"], modes[mode]["missing"]) == (0, 0)
            assert modes[mode]["unique"] == 48
    (epoch,) = summary["train"]
    assert (epoch["duplicates"], epoch["missing"], epoch["samples"]) == (0, 0, 48)
    assert (tmp_path / "demo" / "shards" / "manifest.json").is_file()


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)",
)
def test_new_user_sees_bench_results_and_the_live_job(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "demo",
            "--port",
            str(port),
            "--dir",
            str(tmp_path / "demo"),
            *DEMO_ARGS,
        ],  # fmt: skip
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=child_env(),
    )
    try:
        url = _wait_for_dashboard_line(proc)
        assert url == f"http://127.0.0.1:{port}"
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "rect.bar[data-mode='tar-aware']"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-job=demo-train]"))
        runs = httpx.get(f"{url}/api/benchmarks").json()
        newest = runs["runs"][0] if isinstance(runs, dict) else runs[0]
        result = httpx.get(f"{url}/api/benchmarks/{newest['id']}").json()["result"]
        row = browser.find_element(By.CSS_SELECTOR, "tr[data-mode='tar-naive']")
        shown = row.find_element(By.CSS_SELECTOR, "[data-field=duplicates]").text
        assert shown == str(result["modes"]["tar-naive"]["duplicates"])
        job = httpx.get(f"{url}/api/jobs/demo-train").json()
        card = browser.find_element(By.CSS_SELECTOR, "[data-job=demo-train]")
        assert card.find_element(By.CSS_SELECTOR, "[data-field=samples]").text == str(
            job["samples"]
        )
        shot = tmp_path / "demo-dashboard.png"
        assert browser.save_screenshot(str(shot))
        keep = os.environ.get("DEMO_SCREENSHOT")
        if keep:
            shutil.copyfile(shot, keep)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_dashboard_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + 400
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "dashboard at " in line:
            return line.split("dashboard at ", 1)[1].split()[0].rstrip("/")
        if time.monotonic() > deadline:
            break
    raise AssertionError("demo never printed its URL:\n" + "".join(seen[-40:]))
