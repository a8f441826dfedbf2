from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from server.jobs import JobReport
from server.metrics import ServiceMetrics
from server.store import Store

RESULT = {
    "limit": {"samples_per_s": 1000.0},
    "modes": {
        "tar-naive": {
            "status": "ok",
            "samples_per_s": 400.0,
            "ratio_to_limit": 1.6,
            "limit_samples_per_s": 250.0,
            "noisy": True,
            "duplicates": 40,
            "missing": 0,
        },
        "tar-aware": {
            "status": "ok",
            "samples_per_s": 900.0,
            "ratio_to_limit": 0.9,
            "limit_samples_per_s": 1000.0,
            "noisy": False,
            "duplicates": 0,
            "missing": 0,
        },
        "litdata": {"status": "skipped", "reason": "not installed"},
    },
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_metric_is_named_shardfeed() -> None:
    store = Store(":memory:")
    text = ServiceMetrics(store, stale_s=30.0).render().decode()
    names = re.findall(r"^# TYPE (\S+)", text, flags=re.M)
    assert names and all(n.startswith("shardfeed_") for n in names)
    assert "python_gc" not in text and "process_cpu" not in text


def test_job_figures_come_from_the_store() -> None:
    now = [1000.0]
    store = Store(":memory:")
    for samples_done, at, elapsed in ((100, 999.0, 1.0), (300, 1000.0, 2.0)):
        store.add_report(
            JobReport(
                job="train-a",
                rank=0,
                received_at=at,
                samples=samples_done,
                bytes=10,
                blocked_s=0.5,
                elapsed_s=elapsed,
                tracker={"duplicates": 3, "missing": 7},
            ),
            keep=100,
        )
    values = samples(ServiceMetrics(store, stale_s=30.0, clock=lambda: now[0]).render().decode())
    job = (("job", "train-a"),)
    assert values[("shardfeed_job_samples_per_second", job)] == 200.0
    assert values[("shardfeed_job_samples_total", job)] == 300.0
    assert values[("shardfeed_job_duplicates", job)] == 3.0
    assert values[("shardfeed_job_missing", job)] == 7.0
    assert values[("shardfeed_job_active_ranks", job)] == 1.0
    now[0] = 2000.0
    values = samples(ServiceMetrics(store, stale_s=30.0, clock=lambda: now[0]).render().decode())
    assert values[("shardfeed_job_samples_per_second", job)] == 0.0
    assert values[("shardfeed_job_last_report_age_seconds", job)] == 1000.0


def test_benchmark_figures_describe_the_newest_done_run() -> None:
    store = Store(":memory:")
    old = store.create_run({"shards": "/d"})
    store.finish_run(old.id, "done", result={"limit": {}, "modes": {"map": {"samples_per_s": 1.0}}})
    run = store.create_run({"shards": "/d"})
    store.finish_run(run.id, "done", result=RESULT)
    store.create_run({"shards": "/d"})
    values = samples(ServiceMetrics(store, stale_s=30.0).render().decode())
    naive = (("mode", "tar-naive"), ("run", run.id))
    aware = (("mode", "tar-aware"), ("run", run.id))
    assert values[("shardfeed_benchmark_samples_per_second", naive)] == 400.0
    assert values[("shardfeed_benchmark_ratio_to_limit", aware)] == 0.9
    assert values[("shardfeed_benchmark_mode_limit_samples_per_second", naive)] == 250.0
    assert values[("shardfeed_benchmark_noisy", naive)] == 1.0
    assert values[("shardfeed_benchmark_noisy", aware)] == 0.0
    assert values[("shardfeed_benchmark_duplicates", naive)] == 40.0
    assert values[("shardfeed_benchmark_limit_samples_per_second", (("run", run.id),))] == 1000.0
    assert values[("shardfeed_benchmark_runs", (("status", "queued"),))] == 1.0
    assert values[("shardfeed_benchmark_runs", (("status", "done"),))] == 2.0
    assert not any(
        key[0].startswith("shardfeed_benchmark") and ("mode", "litdata") in key[1] for key in values
    )
    assert not any(("run", old.id) in key[1] for key in values)


def test_each_instance_has_its_own_registry() -> None:
    store = Store(":memory:")
    a, b = ServiceMetrics(store, stale_s=1.0), ServiceMetrics(store, stale_s=1.0)
    a.reports.inc(5)
    assert samples(a.render().decode())[("shardfeed_stats_reports_total", ())] == 5.0
    assert samples(b.render().decode())[("shardfeed_stats_reports_total", ())] == 0.0
