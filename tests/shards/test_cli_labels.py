"""``shardfeed shard SRC OUT --labels FILE --classes-from MANIFEST [--strict]`` as a user runs it.

A val set built from a flat folder plus a labels file, labelled with the train build's class
list: the integers stored in the shards must be the train ones, whatever val lacks or in
whatever order its labels file lists classes; what labelling leaves out is counted and named;
``--strict`` refuses it; builds stay byte-reproducible across workers and parts. Runs go through
``server.cli.main`` (the console script's code) and, for the one-line error, the script itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.cli import main
from shards.labelreport import FIRST
from shards.manifest import Manifest
from tests.shards.helpers import file_hashes, imagenet_csv, make_flat, stored_samples

_SCRIPT = Path(sys.executable).parent / "shardfeed"
SHARDFEED = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "server.cli"]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    return run


def one_line_error(proc: subprocess.CompletedProcess[str], match: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardfeed shard: error: "), proc.stderr
    assert match in lines[0], lines[0]


@dataclass(frozen=True)
class Sets:
    base: Path
    train: Path  # class folders
    shards: Path  # train shards
    val: Path  # ImageNet-val layout: val/val/*.JPEG + val/LOC_val_solution.csv
    classes: list[str]

    @property
    def flat(self) -> Path:
        return self.val / "val"

    @property
    def csv(self) -> Path:
        return self.val / "LOC_val_solution.csv"


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> Sets:
    """A sampled train folder and its shards, and the same seed's val split as ImageNet ships
    it (read-only for tests)."""
    base = tmp_path_factory.mktemp("sets")
    common = ["--classes", "4", "--size", "tiny", "--seed", "3"]
    assert main(["sample", str(base / "train"), "--images", "40", *common]) == 0
    assert main(["sample", str(base / "val"), "--images", "24", *common, "--layout",
                 "imagenet-val"]) == 0  # fmt: skip
    assert main(["shard", str(base / "train"), str(base / "shards"), "--num-shards", "2"]) == 0
    classes = Manifest.load(base / "shards").classes
    return Sets(base, base / "train", base / "shards", base / "val", classes)


def csv_classes(path: Path) -> dict[str, str]:
    rows = path.read_text().splitlines()[1:]
    return {r.split(",")[0]: r.split(",")[1].split()[0] for r in rows}


def test_val_from_imagenet_csv_gets_the_train_integers(
    sets: Sets, tmp_path: Path, cli: Any
) -> None:
    out = tmp_path / "val_shards"
    proc = cli("shard", sets.flat, out, "--labels", sets.csv, "--classes-from", sets.shards,
               "--num-shards", "3", "--against", sets.train, "--strict", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["samples"], doc["classes"], doc["skipped"], doc["against_matches"]) == (24, 4, 0, 0)
    assert doc["labels"]["labels_file"] == str(sets.csv.resolve())
    assert doc["labels"]["classes_from"] == str(sets.shards.resolve())
    assert all(doc["labels"][k]["count"] == 0 for k in doc["labels"] if k.startswith(("im", "r")))
    truth = csv_classes(sets.csv)
    stored = stored_samples(out)
    assert len(stored) == 24
    for path, (label, name) in stored.items():
        assert name == truth[Path(path).stem] and label == sets.classes.index(name)
    manifest = Manifest.load(out)
    assert manifest.classes == sets.classes
    assert manifest.class_counts == [6, 6, 6, 6]
    assert cli("verify", out).returncode == 0
    info = json.loads(cli("inspect", out, "--json").stdout)
    assert info["class_counts"] == dict.fromkeys(sets.classes, 6)


def test_against_a_flat_val_folder_finds_no_leak_and_a_planted_one(
    sets: Sets, tmp_path: Path, cli: Any
) -> None:
    proc = cli("shard", sets.train, tmp_path / "a", "--num-shards", "1", "--verify", "header",
               "--against", sets.flat, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["against_matches"] == 0
    leaky = tmp_path / "leaky"
    shutil.copytree(sets.flat, leaky)
    planted = sorted(sets.train.rglob("*.JPEG"))[5]
    shutil.copy(planted, leaky / "copied.JPEG")
    proc = cli("shard", sets.train, tmp_path / "b", "--num-shards", "1", "--verify", "header",
               "--against", leaky, "--json")  # fmt: skip
    assert json.loads(proc.stdout)["against_matches"] == 1
    images = Manifest.load(tmp_path / "b").duplicates["against"]["images"]
    assert images[0]["path"] == planted.relative_to(sets.train).as_posix()
    assert images[0]["other_paths"] == ["copied.JPEG"]


def test_val_lacking_a_class_listed_in_another_order_keeps_the_train_integers(
    sets: Sets, tmp_path: Path, cli: Any
) -> None:
    src = tmp_path / "val"
    dropped, *kept = sets.classes
    names = [f"img_{i}.jpg" for i in range(9)]
    make_flat(src, names)
    labels = tmp_path / "val.txt"
    order = kept[::-1]
    labels.write_text("".join(f"{n}\t{order[i % 3]}\n" for i, n in enumerate(names)))
    out = tmp_path / "out"
    proc = cli("shard", src, out, "--labels", labels, "--classes-from",
               sets.shards / "manifest.json", "--num-shards", "2", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["empty_classes"] == [dropped] and doc["samples"] == 9
    assert Manifest.load(out).classes == sets.classes
    for i, name in enumerate(names):
        assert stored_samples(out)[name] == (sets.classes.index(order[i % 3]), order[i % 3])
    without = tmp_path / "without"  # without --classes-from the val set has its own 3 classes
    assert cli("shard", src, without, "--labels", labels, "--num-shards", "1").returncode == 0
    assert Manifest.load(without).classes == sorted(kept)


@pytest.fixture
def messy(tmp_path: Path, sets: Sets) -> tuple[Path, Path]:
    """A flat folder with 7 images no row names, 2 with a class outside the train list and 6
    rows without an image, beside 4 well-labelled images."""
    src = tmp_path / "messy"
    make_flat(src, [f"ok_{i}.JPEG" for i in range(4)] + [f"nolabel_{i}.JPEG" for i in range(7)]
              + ["alien_0.JPEG", "alien_1.JPEG"])  # fmt: skip
    rows = {f"ok_{i}": sets.classes[i] for i in range(4)}
    rows |= {"alien_0": "n99999999", "alien_1": "n99999999"}
    rows |= {f"gone_{i}": sets.classes[0] for i in range(6)}
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text(imagenet_csv(rows))
    return src, csv


def test_left_out_images_and_rows_are_counted_with_the_first_names(
    messy: tuple[Path, Path], sets: Sets, tmp_path: Path, cli: Any
) -> None:
    src, csv = messy
    out = tmp_path / "out"
    args = ["shard", src, out, "--labels", csv, "--classes-from", sets.shards, "--num-shards", "2"]
    proc = cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["samples"] == 4 and doc["skipped"] == 9
    assert doc["skipped_by_reason"] == {"class not in the class list": 2, "no label": 7}
    labels = doc["labels"]
    assert labels["images_without_label"] == {
        "count": 7, "first": [f"nolabel_{i}.JPEG" for i in range(FIRST)]
    }  # fmt: skip
    assert labels["images_with_unknown_class"] == {
        "count": 2, "first": ["alien_0.JPEG (n99999999)", "alien_1.JPEG (n99999999)"]
    }  # fmt: skip
    assert labels["rows_without_image"] == {
        "count": 6, "first": [f"gone_{i}" for i in range(FIRST)]
    }  # fmt: skip
    assert Manifest.load(out).labels == labels
    assert json.loads(cli("inspect", out, "--json").stdout)["labels"] == labels
    text = cli("inspect", out).stdout
    assert re.search(r"^images_without_label\s+7 \(nolabel_0\.JPEG, .*, \.\.\.\)$", text, re.M)
    assert re.search(r"^rows_without_image\s+6 \(gone_0, ", text, re.M)


def test_strict_refuses_before_writing_anything(
    messy: tuple[Path, Path], sets: Sets, tmp_path: Path, cli: Any
) -> None:
    src, csv = messy
    out = tmp_path / "out"
    proc = cli("shard", src, out, "--labels", csv, "--classes-from", sets.shards, "--strict")
    one_line_error(proc, "--strict: expected every image labelled")
    for words in ("7 image(s) without a label (nolabel_0.JPEG", "2 image(s) with a class outside",
                  "6 labels-file row(s) without an image (gone_0"):  # fmt: skip
        assert words in proc.stderr
    assert not list(out.glob("shard-*")) and not (out / "manifest.json").exists()
    plan = tmp_path / "plan"  # a plan made without --strict: a --strict part refuses it too
    assert cli("shard", src, plan, "--labels", csv, "--plan-only").returncode == 0
    one_line_error(cli("shard", plan, "--part", "1/1", "--strict"), "--strict: expected")
    assert not list(plan.glob("shard-*"))


def test_class_folder_val_with_classes_from_reports_an_extra_folder(
    sets: Sets, tmp_path: Path, cli: Any
) -> None:
    src = tmp_path / "val"
    shutil.copytree(sets.train / sets.classes[1], src / sets.classes[1])
    shutil.copytree(sets.train / sets.classes[0], src / "n_extra")
    out = tmp_path / "out"
    proc = cli("shard", src, out, "--classes-from", sets.shards, "--num-shards", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["labels"]["class_folders_not_in_list"] == {"count": 1, "first": ["n_extra"]}
    assert doc["labels"]["images_with_unknown_class"]["count"] == 10
    assert {label for label, _ in stored_samples(out).values()} == {1}
    assert doc["empty_classes"] == [c for i, c in enumerate(sets.classes) if i != 1]
    one_line_error(
        cli("shard", src, tmp_path / "o2", "--classes-from", sets.shards, "--strict"),
        "1 class folder(s) not in the class list (n_extra)",
    )


def test_same_input_and_seed_give_the_same_bytes_for_workers_and_parts(
    sets: Sets, tmp_path: Path, cli: Any
) -> None:
    common = [
        "--labels",
        sets.csv,
        "--classes-from",
        sets.shards,
        "--num-shards",
        "3",
        "--seed",
        "5",
    ]
    assert cli("shard", sets.flat, tmp_path / "one", *common).returncode == 0
    assert cli("shard", sets.flat, tmp_path / "two", *common, "--workers", "2").returncode == 0
    for part in ("2/2", "1/2"):
        proc = cli("shard", sets.flat, tmp_path / "parts", *common, "--part", part)
        assert proc.returncode == 0, proc.stderr
    assert cli("shard", "--merge", tmp_path / "parts").returncode == 0
    planned = tmp_path / "planned"
    assert cli("shard", sets.flat, planned, *common, "--plan-only").returncode == 0
    for part in ("1/2", "2/2"):  # no SRC, no --labels: the plan holds them
        assert cli("shard", planned, "--part", part).returncode == 0
    assert cli("shard", "--merge", planned).returncode == 0
    first = file_hashes(tmp_path / "one")
    assert len(first) == 7
    for other in ("two", "parts", "planned"):
        assert file_hashes(tmp_path / other) == first, other
    one_line_error(
        cli("shard", planned, "--part", "1/2", "--labels", sets.base / "other.csv"),
        "labels=",
    )


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("empty", "is empty"),
        ("header_only", "holds only its header"),
        ("wrong_header", "expected the header 'ImageId,PredictionString'"),
        ("duplicate", "line 3: a second row for 'ILSVRC2012_val_00000001'"),
        ("no_match", "got none of its 2 row(s) matching the 24 image file(s)"),
        ("labels_missing", "--labels file"),
        ("classes_from_missing", "--classes-from: no manifest at"),
        ("classes_from_twice", "got 'a' twice"),
        ("strict_alone", "expected --labels or --classes-from with --strict"),
        ("flat_without_labels", "give its labels with --labels FILE"),
    ],
)
def test_bad_labels_inputs_give_one_line_errors(
    sets: Sets, tmp_path: Path, cli: Any, case: str, match: str
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text({
        "empty": "",
        "header_only": "ImageId,PredictionString\n",
        "wrong_header": "ImageId,Label\nILSVRC2012_val_00000001,n1\n",
        "duplicate": imagenet_csv({"ILSVRC2012_val_00000001": "a"})
        + "ILSVRC2012_val_00000001,b 0 0 1 1\n",
        "no_match": imagenet_csv({"x1": "a", "x2": "b"}),
    }.get(case, imagenet_csv({"ILSVRC2012_val_00000001": "a"})))  # fmt: skip
    twice = tmp_path / "twice"
    twice.mkdir()
    doc = json.loads((sets.shards / "manifest.json").read_text())
    (twice / "manifest.json").write_text(json.dumps(doc | {"classes": ["a", "b", "a", "c"]}))
    extras: dict[str, list[Any]] = {
        "labels_missing": ["--labels", tmp_path / "nope.csv"],
        "classes_from_missing": ["--labels", labels, "--classes-from", tmp_path / "nope"],
        "classes_from_twice": ["--labels", labels, "--classes-from", twice],
        "strict_alone": ["--strict"],
        "flat_without_labels": [],
    }
    extra = extras.get(case, ["--labels", labels])
    out = tmp_path / "out"
    one_line_error(cli("shard", sets.flat, out, *extra), match)
    assert not list(tmp_path.rglob("shard-*.tar"))


def test_console_script_reports_a_wrong_header_in_one_line(sets: Sets, tmp_path: Path) -> None:
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("id,class\nILSVRC2012_val_00000001,n1\n")
    args = ["shard", str(sets.flat), str(tmp_path / "out"), "--labels", str(labels)]
    proc = subprocess.run([*SHARDFEED, *args], capture_output=True, text=True, timeout=120)
    one_line_error(proc, f"--labels {labels} line 1: expected the header")
    assert "Traceback" not in proc.stderr
