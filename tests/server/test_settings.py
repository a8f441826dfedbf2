from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from server.settings import Settings


@pytest.fixture(autouse=True)
def no_shardfeed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SHARDFEED_"):
            monkeypatch.delenv(name)


def test_defaults_bind_loopback_and_read_nothing() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.data_roots == []
    assert settings.token_value() is None


def test_environment_fills_every_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    given: dict[str, tuple[str, Any]] = {
        "host": ("0.0.0.0", "0.0.0.0"),
        "port": ("9123", 9123),
        "db": (str(tmp_path / "x.db"), tmp_path / "x.db"),
        "data_roots": (f"{a}{os.pathsep}{b}", [a.resolve(), b.resolve()]),
        "allowed_hosts": ("one.example, two.example", ["one.example", "two.example"]),
        "token": ("s3cret", "s3cret"),
        "max_workers": ("4", 4),
        "max_epochs": ("3", 3),
        "max_repeat": ("2", 2),
        "max_buffer_bytes": ("123456789", 123_456_789),
        "max_run_s": ("77", 77),
        "max_body_bytes": ("4096", 4096),
        "max_queued": ("5", 5),
        "cancel_grace_s": ("1.5", 1.5),
        "job_stale_s": ("9.5", 9.5),
        "job_max_reports": ("11", 11),
        "job_max_ranks": ("12", 12),
        "job_max_samples": ("1000", 1000),
        "job_max_jobs": ("13", 13),
        "job_retention_s": ("14.5", 14.5),
        "sse_heartbeat_s": ("2.5", 2.5),
    }
    assert set(given) == set(Settings.model_fields), "a new setting needs a row here"
    for name, (text, _) in given.items():
        monkeypatch.setenv(f"SHARDFEED_{name.upper()}", text)
    settings = Settings()
    defaults = Settings.model_construct()
    for name, (_, expected) in given.items():
        value = getattr(settings, name)
        if name == "token":
            assert settings.token_value() == expected and expected not in repr(settings)
        else:
            assert value == expected, name
            assert value != getattr(defaults, name, None), f"{name}: pick a non-default value"


def test_data_roots_accept_a_json_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHARDFEED_DATA_ROOTS", json.dumps([str(tmp_path)]))
    assert Settings().data_roots == [tmp_path.resolve()]


def test_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDFEED_PORT", "9123")
    assert Settings(port=7000).port == 7000


def test_empty_token_means_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDFEED_TOKEN", "")
    assert Settings().token_value() is None


def test_roots_are_resolved_through_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert Settings(data_roots=[tmp_path / "link"]).data_roots == [real]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 70000),
        ("port", -1),
        ("max_workers", 65),
        ("max_epochs", 0),
        ("max_body_bytes", 10),
        ("host", ""),
        ("unknown_option", 1),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})
    assert field in str(info.value)


def test_missing_data_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="existing folder"):
        Settings(data_roots=[tmp_path / "absent"])
