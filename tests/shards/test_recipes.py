"""The README's recipes run as written: Slurm and Kubernetes byte-compared with one machine,
and the val set built from a labels file.

The blocks are read from README.md (so they cannot drift from what is tested); only the
example paths and the shard size are replaced by the test's, and each replaced text must occur
in the block. ``sbatch`` and ``kubectl`` are local stand-ins (no scheduler runs here) that start
the array's or the Indexed Job's K tasks as K concurrent local processes, with the variables
the real ones set (``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``, ``JOB_COMPLETION_INDEX``).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shards.manifest import Manifest
from tests.helpers import recipe
from tests.shards.helpers import file_hashes, make_plain

BIN = Path(sys.executable).parent

SBATCH = r'''
"""Local sbatch: --wait --array=A-B SCRIPT runs the tasks A..B as concurrent processes."""
import os, re, subprocess, sys
args = sys.argv[1:]
if "--wait" not in args:
    sys.exit("sbatch stand-in: expected --wait")
array = next(a for a in args if a.startswith("--array="))
first, last = map(int, re.fullmatch(r"--array=(\d+)-(\d+)", array).groups())
script = args[-1]
procs = []
for i in range(first, last + 1):
    env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(i), SLURM_CPUS_PER_TASK="1",
               SLURM_ARRAY_TASK_COUNT=str(last - first + 1), SLURM_ARRAY_TASK_MIN=str(first))
    procs.append(subprocess.Popen(["bash", script], env=env))
codes = [p.wait() for p in procs]
sys.exit(0 if all(c == 0 for c in codes) else 1)
'''

KUBECTL = r'''
"""Local kubectl: `apply -f JOB.yaml` runs an Indexed Job's completions as concurrent
processes (its container command, JOB_COMPLETION_INDEX set, env from the manifest);
`wait --for=condition=complete job/NAME` reports how it ended."""
import os, subprocess, sys
import yaml
state = os.environ["KUBECTL_STATE"]
args = sys.argv[1:]
if args[:2] == ["apply", "-f"]:
    job = yaml.safe_load(open(args[2]))
    spec = job["spec"]
    if job["kind"] != "Job" or spec.get("completionMode") != "Indexed":
        sys.exit("kubectl stand-in: expected an Indexed Job")
    container = spec["template"]["spec"]["containers"][0]
    env = dict(os.environ, **{e["name"]: str(e["value"]) for e in container.get("env", [])})
    procs = [
        subprocess.Popen(container["command"], env=dict(env, JOB_COMPLETION_INDEX=str(i)))
        for i in range(spec["completions"])
    ]
    ok = all(p.wait() == 0 for p in procs)
    with open(os.path.join(state, job["metadata"]["name"]), "w") as f:
        f.write("complete" if ok else "failed")
    print(f"job.batch/{job['metadata']['name']} created")
elif args[0] == "wait" and "--for=condition=complete" in args:
    name = next(a for a in args if a.startswith("job/"))[4:]
    with open(os.path.join(state, name)) as f:
        sys.exit(0 if f.read() == "complete" else 1)
else:
    sys.exit(f"kubectl stand-in: unsupported {args}")
'''


def localise(block: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in block, f"the recipe no longer holds {old!r}: update this test"
        block = block.replace(old, new)
    return block


def stand_in(folder: Path, name: str, code: str) -> None:
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{code}", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    src, ref, work = tmp_path / "imagenet" / "train", tmp_path / "ref", tmp_path / "work"
    make_plain(src, 30, 3)
    work.mkdir()
    (tmp_path / "state").mkdir()
    stand_in(work, "sbatch", SBATCH)
    stand_in(work, "kubectl", KUBECTL)
    one = [str(BIN / "shardfeed"), "shard", str(src), str(ref), "--max-samples", "4"]
    assert subprocess.run(one, capture_output=True, timeout=120).returncode == 0
    return {"root": tmp_path, "src": src, "ref": ref, "work": work}


def run_driver(block: str, folders: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECTL_STATE=str(folders["root"] / "state"))
    env["PATH"] = f"{folders['work']}:{BIN}:{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=folders["work"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_slurm_array_recipe_builds_the_same_bytes(folders: dict[str, Path]) -> None:
    out = folders["root"] / "shared-shards"
    paths = {"/shared/imagenet/train": str(folders["src"]), "/shared/shards": str(out)}
    driver = localise(recipe("slurm driver"), {**paths, "--max-samples 1000": "--max-samples 4"})
    script = localise(recipe("slurm parts.sbatch"), {"/shared/shards": str(out)})
    assert "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" in script
    (folders["work"] / "parts.sbatch").write_text(script, encoding="utf-8")
    proc = run_driver(driver, folders)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(n.endswith(".tar") for n in file_hashes(out)) == 8  # 30 images, 4 per shard
    assert file_hashes(out) == file_hashes(folders["ref"])
    parts = {p.read_text() for p in (out / ".build").glob("shard-*.json")}
    assert {re.search(r'"part": "(\d/\d)"', t).group(1) for t in parts} == {  # type: ignore[union-attr]
        "1/4", "2/4", "3/4", "4/4",
    }  # fmt: skip


def test_kubernetes_indexed_job_recipe_builds_the_same_bytes(folders: dict[str, Path]) -> None:
    out = folders["root"] / "data" / "shards"
    paths = {"/data/imagenet/train": str(folders["src"]), "/data/shards": str(out)}
    driver = localise(recipe("k8s driver"), {**paths, "--max-samples 1000": "--max-samples 4"})
    manifest = localise(recipe("k8s parts-job.yaml"), {"/data/shards": str(out)})
    job = yaml.safe_load(manifest)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert f'/{job["spec"]["completions"]}"' in command, "K in --part must equal completions"
    (folders["work"] / "parts-job.yaml").write_text(manifest, encoding="utf-8")
    proc = run_driver(driver, folders)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert file_hashes(out) == file_hashes(folders["ref"])


def test_val_labels_recipe_runs_as_written(tmp_path: Path) -> None:
    block = localise(
        recipe("val labels"),
        {"--images 4000": "--images 40 --size tiny", "--images 500": "--images 20 --size tiny"},
    )
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = tmp_path / "data"
    train, val = Manifest.load(data / "shards"), Manifest.load(data / "val-shards")
    assert val.classes == train.classes and val.num_samples == 20
    assert val.duplicates["against"]["matches"] == 0
    assert val.class_counts == [2] * 10
    table = proc.stdout[proc.stdout.index("per class (10): label  name  samples") :]
    assert [line.split()[1:] for line in table.splitlines()[1:]] == [[c, "2"] for c in val.classes]
