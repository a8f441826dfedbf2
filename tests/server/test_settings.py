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
    monkeypatch.setenv("SHARDFEED_HOST", "0.0.0.0")
    monkeypatch.setenv("SHARDFEED_PORT", "9123")
    monkeypatch.setenv("SHARDFEED_DB", str(tmp_path / "x.db"))
    monkeypatch.setenv("SHARDFEED_DATA_ROOTS", f"{a}{os.pathsep}{b}")
    monkeypatch.setenv("SHARDFEED_TOKEN", "s3cret")
    monkeypatch.setenv("SHARDFEED_MAX_WORKERS", "4")
    settings = Settings()
    assert (settings.host, settings.port) == ("0.0.0.0", 9123)
    assert settings.db == tmp_path / "x.db"
    assert settings.data_roots == [a.resolve(), b.resolve()]
    assert settings.token_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.max_workers == 4


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
