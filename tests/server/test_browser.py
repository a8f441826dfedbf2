"""The dashboard in headless Chromium (Selenium) against a live server with a finished run.

Skips when Chromium or chromedriver is not installed (``.ci/run`` installs Debian's
``chromium`` and ``chromium-driver``). Set ``DASHBOARD_SCREENSHOT=/path.png`` to keep a copy
of the screenshot outside the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import CHROMEDRIVER, CHROMIUM
from tests.server.helpers import ServedRun

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)",
    ),
]


def post_job_reports(url: str, token: str) -> None:
    """Six reports from two ranks, 0.25 s apart, so the job chart has a line to draw."""
    headers = {"Authorization": f"Bearer {token}"}
    for step in range(1, 7):
        for rank in (0, 1):
            body = {
                "rank": rank,
                "samples": 500 * step,
                "bytes": 500_000 * step,
                "elapsed_s": 0.25 * step,
                "epoch": 0,
                "tracker": {"duplicates": 0, "missing": 1000 - 500 * step // 3},
                "evals": [{"epoch": 0, "top1": 0.4321, "samples": 599}] if step > 3 else [],
            }
            httpx.post(f"{url}/api/jobs/dashboard-demo/stats", json=body, headers=headers)
        time.sleep(0.25)


def test_dashboard_shows_the_run_as_the_api_reports_it(
    browser: Any, served_run: ServedRun, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = served_run.server.url
    post_job_reports(url, served_run.server.token or "")
    api = httpx.get(f"{url}/api/benchmarks/{served_run.run_id}").json()
    modes = api["result"]["modes"]
    ok_modes = [m for m, fig in modes.items() if fig.get("status", "ok") == "ok"]

    browser.get(f"{url}/#run={served_run.run_id}")
    wait = WebDriverWait(browser, 30)
    wait.until(
        lambda d: d.find_element(By.ID, "run-detail").get_attribute("data-rendered") == "result"
    )
    wait.until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "svg[data-chart=modes] rect.bar")) == len(ok_modes)
        )
    )
    wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "[data-job=dashboard-demo] polyline.series")
    )

    assert browser.find_element(By.ID, "run-id").text == served_run.run_id
    assert browser.find_element(By.ID, "run-status").text == "done"
    for mode in ok_modes:
        figures = modes[mode]
        row = browser.find_element(By.CSS_SELECTOR, f"#modes-table tr[data-mode='{mode}']")

        def cell(field: str, row: Any = row) -> str:
            return str(row.find_element(By.CSS_SELECTOR, f"[data-field={field}]").text)

        for field in ("samples", "unique", "duplicates", "missing", "padded"):
            assert cell(field) == str(figures[field]), (mode, field)
        assert cell("samples_per_s") == f"{figures['samples_per_s']:.1f}"
        ratio = f"{figures['ratio_to_limit']:.2f}"
        if figures["noisy"]:  # the machine's speed decides this; both ways are checked
            noise = f"noisy ±{round(100 * figures['limit_spread'])}%"
            assert cell("ratio_to_limit") == f"{ratio} {noise}" and cell("noisy") == noise
            assert row.get_attribute("data-noisy") == "true"
        else:
            assert cell("ratio_to_limit") == ratio and row.get_attribute("data-noisy") == "false"
        # The limit shown beside each mode is the one its ratio was taken against.
        assert cell("limit_samples_per_s") == f"{figures['limit_samples_per_s']:.1f}"
        tick = browser.find_element(By.CSS_SELECTOR, f"line.limit[data-mode='{mode}']")
        assert float(tick.get_attribute("data-limit")) == pytest.approx(
            figures["limit_samples_per_s"]
        )
        bar = browser.find_element(By.CSS_SELECTOR, f"rect.bar[data-mode='{mode}']")
        assert float(bar.get_attribute("data-value")) == pytest.approx(figures["samples_per_s"])
        exactly_once = figures["duplicates"] == 0 and figures["missing"] == 0
        assert cell("verdict").startswith("exactly once") == exactly_once, (mode, cell("verdict"))
    assert (
        "duplicates"
        in browser.find_element(
            By.CSS_SELECTOR, "tr[data-mode='tar-naive'] [data-field=verdict]"
        ).text
    )
    run_row = browser.find_element(By.CSS_SELECTOR, f"#runs tr[data-run='{served_run.run_id}']")
    assert "done" in run_row.text

    job = httpx.get(f"{url}/api/jobs/dashboard-demo").json()
    card = browser.find_element(By.CSS_SELECTOR, "[data-job=dashboard-demo]")
    shown = card.find_element(By.CSS_SELECTOR, "[data-field=samples]").text
    assert shown == str(job["samples"])
    assert job["evals"] == [{"epoch": 0, "top1": 0.4321, "samples": 599}]
    evals = card.find_element(By.CSS_SELECTOR, "[data-field=evals]").text
    assert "epoch 0: 43.2% of 599" in evals

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe

    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def test_dashboard_marks_the_slowest_of_four_ranks(
    browser: Any, served_run: ServedRun, slow_rank_job: tuple[str, int], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    job, slow = slow_rank_job
    url = served_run.server.url
    api = httpx.get(f"{url}/api/jobs/{job}").json()["loading"]
    assert api["slowest_rank"] == slow

    browser.get(f"{url}/")
    card = f"[data-job={job}]"
    WebDriverWait(browser, 30).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, f"{card} rect.rank-bar")) == 4
    )
    bars = browser.find_elements(By.CSS_SELECTOR, f"{card} rect.rank-bar")
    assert [int(b.get_attribute("data-rank")) for b in bars] == [0, 1, 2, 3]  # side by side
    xs = [float(b.get_attribute("x")) for b in bars]
    assert xs == sorted(xs) and len(set(xs)) == 4
    marked = [b for b in bars if b.get_attribute("data-slowest") == "true"]
    assert [int(b.get_attribute("data-rank")) for b in marked] == [slow]
    assert "slow" in marked[0].get_attribute("class").split()
    heights = {int(b.get_attribute("data-rank")): float(b.get_attribute("height")) for b in bars}
    assert heights[slow] == max(heights.values())
    shown = browser.find_element(By.CSS_SELECTOR, f"{card} [data-field=slowest_rank]").text
    assert shown == str(slow)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe

    shot = tmp_path / "ranks.png"
    assert browser.find_element(By.CSS_SELECTOR, card).screenshot(str(shot))
    keep = os.environ.get("DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep.removesuffix(".png") + "-ranks.png")


def test_dashboard_shows_where_a_jobs_rows_were_decoded(
    browser: Any, served_run: ServedRun
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, token = served_run.server.url, served_run.server.token or ""
    body = {"samples": 200, "elapsed_s": 1.0, "decode": {"device": 197, "orientation": 2,
                                                         "format": 1, "error": 0}}  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.post(f"{url}/api/jobs/gpu-decode/stats", json=body, headers=headers).is_success
    browser.get(f"{url}/")
    field = "[data-job=gpu-decode] [data-field=decode]"
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, field))
    text = browser.find_element(By.CSS_SELECTOR, field).text
    assert "decoded on device 98.5%" in text and "(CPU: orientation 2, format 1)" in text


def test_dashboard_shows_a_mixed_jobs_counts_per_source(
    browser: Any, served_run: ServedRun
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, token = served_run.server.url, served_run.server.token or ""
    web = {"quota": 14, "delivered": 14, "unique": 14, "duplicates": 0, "missing": 0}
    curated = {"quota": 6, "delivered": 5, "unique": 5, "duplicates": 0, "missing": 1}
    body = {"samples": 19, "epoch": 0, "sources": {"web": web, "curated": curated},
            "sources_scope": "merged"}  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.post(f"{url}/api/jobs/mixed/stats", json=body, headers=headers).is_success
    browser.get(f"{url}/")
    box = "[data-job=mixed] [data-field=sources]"
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, box))
    assert browser.find_element(By.CSS_SELECTOR, box).get_attribute("data-scope") == "merged"
    lines = browser.find_elements(By.CSS_SELECTOR, f"{box} [data-source]")
    assert [line.text for line in lines] == [
        "web: 14 of 14 delivered · 0 duplicates · 0 missing",
        "curated: 5 of 6 delivered · 0 duplicates · 1 missing",
    ]
