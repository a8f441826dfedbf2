"""``--ray``: the parts as tasks on a real local Ray instance, byte-compared with one machine.

One Ray instance (``ray.init(num_cpus=2)``) serves the module: Ray takes seconds to start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shards.build import BuildError, build_shards
from shards.plan import SizingOptions
from shards.writer import report_path

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'shardfeed[ray]')")

from shards.raybuild import build_on_ray  # noqa: E402
from tests.shards.helpers import file_hashes, make_flat, make_plain, quick_options  # noqa: E402


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def opts(**kw: Any) -> Any:
    kw.setdefault("sizing", SizingOptions(num_shards=6))
    return quick_options(**kw)


def test_ray_build_equals_one_machine_build(
    quirky: Any, tmp_path: Path, local_ray: None, caplog: pytest.LogCaptureFixture
) -> None:
    whole, out = tmp_path / "whole", tmp_path / "ray"
    build_shards(quirky.root, whole, opts(against=str(quirky.against)))
    with caplog.at_level(logging.INFO, logger="shardfeed.ray"):
        summary = build_on_ray(
            quirky.root, out, opts(against=str(quirky.against)), parts=3, poll_s=0.2
        )
    assert summary["parts"] == 3 and summary["shards"] == 6
    assert file_hashes(out) == file_hashes(whole)
    done = sorted(r.getMessage().split(":")[0] for r in caplog.records if "done" in r.getMessage())
    assert done == ["part 1/3 done", "part 2/3 done", "part 3/3 done"]


def _kill_first_attempt_of_part_2(marks: Path, out: Path) -> Any:
    """A hook for the task: the first attempt of part 2 dies (``os._exit``) once it has
    finished its first shard, in the middle of the part; every attempt leaves a mark."""

    def hook(part: tuple[int, int]) -> None:
        attempt = len(list(marks.glob(f"part{part[0]}-*"))) + 1
        (marks / f"part{part[0]}-{attempt}").touch()
        if part[0] != 2 or attempt != 1:
            return
        first = report_path(out, part[0] - 1)

        def die() -> None:
            deadline = time.monotonic() + 60
            while not first.is_file() and time.monotonic() < deadline:
                time.sleep(0.001)
            os._exit(1)

        threading.Thread(target=die, daemon=True).start()

    return hook


def test_a_killed_task_is_retried_to_the_same_bytes(tmp_path: Path, local_ray: None) -> None:
    src, whole, out, marks = (tmp_path / n for n in ("src", "whole", "ray", "marks"))
    make_plain(src, 90, 3)
    marks.mkdir()
    build_shards(src, whole, opts())
    hook = _kill_first_attempt_of_part_2(marks, out)
    summary = build_on_ray(src, out, opts(), parts=2, retries=2, poll_s=0.2, on_attempt=hook)
    assert sorted(p.name for p in marks.iterdir()) == ["part1-1", "part2-1", "part2-2"]
    assert summary["samples"] == 90
    assert file_hashes(out) == file_hashes(whole)
    assert not list(out.rglob("*.tmp"))


def test_a_changed_source_is_not_retried_and_names_the_file(
    tmp_path: Path, local_ray: None
) -> None:
    src, out, marks = tmp_path / "src", tmp_path / "ray", tmp_path / "marks"
    make_plain(src, 12, 3)
    marks.mkdir()

    def remove_a_file(part: tuple[int, int]) -> None:
        (marks / f"part{part[0]}-{len(list(marks.iterdir()))}").touch()
        (src / "n00000001" / "img_00004.jpg").unlink(missing_ok=True)

    with pytest.raises(ValueError, match=r"n00000001/img_00004\.jpg is gone"):
        build_on_ray(src, out, opts(), parts=1, retries=2, on_attempt=remove_a_file)
    assert len(list(marks.iterdir())) == 1


def test_a_part_that_keeps_dying_stops_the_build_after_its_retries(
    tmp_path: Path, local_ray: None
) -> None:
    src, out, marks = tmp_path / "src", tmp_path / "ray", tmp_path / "marks"
    make_plain(src, 6, 2)
    marks.mkdir()

    def always_die(part: tuple[int, int]) -> None:
        (marks / f"attempt-{len(list(marks.iterdir())) + 1}").touch()
        os._exit(1)

    with pytest.raises(BuildError, match=r"part 1/1 failed on Ray after its retries"):
        build_on_ray(src, out, opts(), parts=1, retries=1, on_attempt=always_die)
    assert len(list(marks.iterdir())) == 2  # the first attempt and one retry
    assert not (out / "manifest.json").exists()


def test_ray_build_of_a_labelled_flat_folder_equals_one_machine_build(
    tmp_path: Path, local_ray: None
) -> None:
    train, val = tmp_path / "train", tmp_path / "val"
    make_plain(train, 6, 3)
    build_shards(train, tmp_path / "train_shards", opts(sizing=SizingOptions(num_shards=1)))
    names = make_flat(val, [f"v_{i:03d}.jpg" for i in range(24)])
    labels = tmp_path / "val.txt"
    labels.write_text("".join(f"{n} n{i % 3:08d}\n" for i, n in enumerate(names[::-1])))
    labelled = opts(labels=str(labels), classes_from=str(tmp_path / "train_shards"), strict=True)
    build_shards(val, tmp_path / "whole", labelled)
    summary = build_on_ray(val, tmp_path / "ray", labelled, parts=2, poll_s=0.2)
    assert summary["samples"] == 24 and summary["labels"]["rows_without_image"]["count"] == 0
    assert file_hashes(tmp_path / "ray") == file_hashes(tmp_path / "whole")
