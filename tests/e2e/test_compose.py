"""``docker-compose.yml`` parsed and checked (no Docker engine here: the image is not built)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_three_services_share_a_named_volume() -> None:
    doc = _compose()
    assert set(doc["services"]) == {"server", "shard", "train"}
    assert "data" in doc["volumes"]
    for service in doc["services"].values():
        assert "data:/data" in service["volumes"]


def test_server_has_a_healthcheck_on_healthz_and_binds_loopback_on_the_host() -> None:
    server = _compose()["services"]["server"]
    assert "/healthz" in " ".join(server["healthcheck"]["test"])
    assert all(p.startswith("127.0.0.1:") for p in server["ports"])


def test_train_waits_for_a_healthy_server_and_finished_shards() -> None:
    train = _compose()["services"]["train"]
    assert train["depends_on"] == {
        "server": {"condition": "service_healthy"},
        "shard": {"condition": "service_completed_successfully"},
    }
    assert "http://server:8000" in train["command"]


def test_token_comes_from_the_environment() -> None:
    for service in _compose()["services"].values():
        assert service["environment"]["SHARDFEED_TOKEN"] == "${SHARDFEED_TOKEN:-}"


def test_every_shardfeed_command_in_it_is_a_real_subcommand() -> None:
    commands: list[list[str]] = []
    for service in _compose()["services"].values():
        cmd = service["command"]
        if cmd[0] == "sh":
            for part in cmd[-1].replace("(", " ").replace(")", " ").split("&&"):
                words = part.replace("||", " ").split()
                if "shardfeed" in words:
                    commands.append(words[words.index("shardfeed") :])
        else:
            commands.append(cmd)
    names = {c[1] for c in commands}
    assert names == {"serve", "sample", "shard", "train"}
    for name in names:
        proc = subprocess.run(
            [sys.executable, "-m", "server.cli", name, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, (name, proc.stderr)
    for cmd in commands:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from server.cli import build_parser; "
                "build_parser(sys.argv[1]).parse_args(sys.argv[1:])",
                *cmd[1:],
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, (cmd, proc.stderr)


def test_dockerfile_runs_the_service_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=" in text and "USER shardfeed" in text
    assert '"shardfeed", "serve"' in text
