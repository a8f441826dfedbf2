"""Secrets in URLs never reach a message (``loader.remote.redact``): user info and
signature-like query values are hidden in the one redaction function, and in the errors, bad-
sample warnings and service records that carry URLs, read from a real HTTP server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loader.dataloader import make_loader
from loader.reader import ShardReader
from loader.remote.errors import RemoteReadError
from loader.remote.files import RemoteFile
from loader.remote.redact import redact
from loader.remote.retry import RetryPolicy
from loader.sources import resolve_source
from server.store import Store
from tests.loader.faults_http import FaultyServer
from tests.loader.helpers import default_image_bytes, write_test_shards

FAST = RetryPolicy(attempts=2, backoff_s=0.001, timeout_s=5)
SECRET = "hunter2pw"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://u:p@h/x.tar", "http://***@h/x.tar"),
        ("https://token@h:8/a?b=1", "https://***@h:8/a?b=1"),
        (
            "s3://b/k.tar?X-Amz-Credential=AK%2F1&X-Amz-Signature=abc&x-id=GetObject",
            "s3://b/k.tar?X-Amz-Credential=***&X-Amz-Signature=***&x-id=GetObject",
        ),
        ("see https://h/a?sig=zz&sv=1#frag, then", "see https://h/a?sig=***&sv=1#frag, then"),
        (
            "'http://h/a?access_token=q' and gs://b/o?key=k",
            "'http://h/a?access_token=*** and gs://b/o?key=***",
        ),
        ("/local/path/shard.tar and plain text", "/local/path/shard.tar and plain text"),
        ("http://h/a?page=2&id=7", "http://h/a?page=2&id=7"),
    ],
)
def test_redact_hides_secrets_and_keeps_the_rest(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(redact(text)) == expected


@given(
    user=st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=12),
    password=st.text(
        "abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%", min_size=4, max_size=24
    ),
    name=st.sampled_from(
        ["sig", "Signature", "X-Amz-Signature", "token", "X-Goog-Credential", "api_key"]
    ),
    prefix=st.text(max_size=10).filter(lambda t: "://" not in t),
)
def test_no_secret_survives_in_any_message(
    user: str, password: str, name: str, prefix: str
) -> None:
    secret = "S3CR3T" + password
    url = f"https://{user}:{secret}@host.example/p/x.tar?a=1&{name}={secret}&b=2"
    out = redact(f"{prefix} {url}: failed")
    assert secret not in out and "host.example/p/x.tar" in out


def test_errors_and_bad_sample_warnings_over_http_name_no_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = 4
    write_test_shards(
        tmp_path,
        [6, 5],
        image_bytes=lambda g: b"not an image" if g == bad else default_image_bytes(g),
    )
    with FaultyServer(tmp_path) as server:
        base = server.url.replace("http://", f"http://reader:{SECRET}@")
        with caplog.at_level(logging.WARNING):
            loader = make_loader(
                base + "manifest.json", batch_size=4, image_size=0, num_workers=0, retry=FAST
            )
            ids = [int(i) for b in loader for i, p in zip(b.ids, b.padded, strict=True) if not p]
        assert sorted(ids) == [g for g in range(11) if g != bad]
        assert "skipping bad sample in shard http://***@127.0.0.1" in caplog.text
        messages = [caplog.text]
        server.script("shard-000001.tar", ["403"] * 4, methods="GET")
        shard = resolve_source(base + "manifest.json", retry=FAST).shards[1]
        with pytest.raises(RemoteReadError) as info:
            list(ShardReader(shard).read(0, 2))
        messages += [str(info.value), info.value.url, info.value.cause]
        with pytest.raises(FileNotFoundError) as missing:
            resolve_source([base + "nothing.tar"], retry=FAST)
        messages.append(str(missing.value))
        with pytest.raises(RemoteReadError) as signed:
            server.script("shard-000000.tar", ["403"] * 4, methods="GET")
            RemoteFile(server.url + f"shard-000000.tar?X-Amz-Signature={SECRET}", retry=FAST).fetch(
                0, 10
            )
        messages += [str(signed.value), signed.value.url]
    assert all(SECRET not in m for m in messages), [m for m in messages if SECRET in m]
    assert "http://***@127.0.0.1" in str(info.value) and "shard-000001.tar" in str(info.value)
    assert "X-Amz-Signature=***" in str(signed.value)


def test_the_service_stores_and_shows_no_credentials(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        shards = f"http://ci:{SECRET}@data.example/set/manifest.json"
        run = store.create_run({"shards": shards, "workers": 2})
        store.finish_run(run.id, "failed", error=f"RemoteReadError: reading {shards} failed")
        record = store.get_run(run.id)
        assert record is not None and record.error is not None
        shown = str(record.to_dict())
        assert SECRET not in record.error and SECRET not in shown
        assert "http://***@data.example/set/manifest.json" in shown
        assert record.config["shards"] == shards  # the runner still reads what was asked
    finally:
        store.close()


def test_the_cli_names_no_credentials(tmp_path: Path) -> None:
    """``shardfeed`` over a missing remote shard: the one-line error and every log line."""
    import os
    import subprocess
    import sys

    with FaultyServer(tmp_path) as server:
        url = server.url.replace("http://", f"http://ci:{SECRET}@") + f"nothing.tar?sig={SECRET}"
        run = subprocess.run(
            [sys.executable, "-m", "server.cli", "bench", "--shards", url, "--modes", "tar-aware",
             "--decode", "none", "--repeat", "1", "--json"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )  # fmt: skip
    assert run.returncode != 0
    assert "error" in run.stderr and "127.0.0.1" in run.stderr
    assert SECRET not in run.stderr + run.stdout
