from __future__ import annotations

import argparse
import os
import sqlite3
from pathlib import Path

import pytest

from server import _serve_cli
from server.cli import build_parser, main
from server.store import SCHEMA_VERSION, Store


@pytest.fixture(autouse=True)
def no_shardfeed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SHARDFEED_"):
            monkeypatch.delenv(name)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_flags_become_settings(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    args = parse(
        "--host",
        "127.0.0.2",
        "--port",
        "9001",
        "--db",
        str(tmp_path / "x.db"),
        "--data-root",
        str(a),
        "--data-root",
        str(b),
        "--token",
        "t",
    )
    settings = _serve_cli.settings_from_args(args)
    assert (settings.host, settings.port, settings.db) == ("127.0.0.2", 9001, tmp_path / "x.db")
    assert settings.data_roots == [a.resolve(), b.resolve()]
    assert settings.token_value() == "t"


def test_environment_fills_what_flags_leave_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHARDFEED_PORT", "9002")
    monkeypatch.setenv("SHARDFEED_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("SHARDFEED_TOKEN", "from-env")
    settings = _serve_cli.settings_from_args(parse("--port", "9003"))
    assert settings.port == 9003
    assert settings.data_roots == [tmp_path.resolve()]
    assert settings.token_value() == "from-env"
    assert settings.host == "127.0.0.1"


def test_bad_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "port" in err
    assert main(["serve", "--data-root", str(tmp_path / "absent")]) == 2
    assert "data_roots" in capsys.readouterr().err


def test_a_store_from_a_newer_release_is_refused_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "new.db"
    Store(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    assert main(["serve", "--db", str(db), "--port", "0"]) == 2
    assert "schema version" in capsys.readouterr().err


def test_a_file_that_is_not_sqlite_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not a database" * 100)
    assert main(["serve", "--db", str(db), "--port", "0"]) == 2
    assert "SQLite" in capsys.readouterr().err
