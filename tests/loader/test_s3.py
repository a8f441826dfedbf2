"""Shards on S3, through fsspec (s3fs), against moto's S3-compatible server started here on
127.0.0.1: a manifest and shards uploaded to a bucket load exactly once through ``s3://``,
with DataLoader workers, straight and through the node-local cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loader.dataloader import make_loader
from loader.remote.retry import RetryPolicy
from tests.loader.helpers import write_test_shards

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[dev]')")
moto_server = pytest.importorskip(
    "moto.server", reason="moto's server is not installed (pip install 'moto[server]')"
)
boto3 = pytest.importorskip("boto3")

SIZES = [9, 6, 11]
TOTAL = sum(SIZES)
BUCKET = "shardfeed-test"


@pytest.fixture
def s3_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A running S3 server holding ``SIZES`` shards under ``s3://BUCKET/ds/``; yields the
    manifest URL. Credentials and the endpoint reach s3fs (and forked workers) via env."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    local = tmp_path / "ds"
    write_test_shards(local, SIZES)
    for path in sorted(local.iterdir()):
        client.upload_file(str(path), BUCKET, f"ds/{path.name}")
    try:
        yield f"s3://{BUCKET}/ds/manifest.json"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def _epoch(url: str, **options: object) -> tuple[list[int], dict[str, int]]:
    loader = make_loader(
        url,
        batch_size=4,
        num_workers=2,
        image_size=0,
        retry=RetryPolicy(attempts=3, backoff_s=0.01, timeout_s=10),
        multiprocessing_context="fork",
        timeout=60,
        **options,  # type: ignore[arg-type]
    )
    ids = [
        int(g) for batch in loader for g, p in zip(batch.ids, batch.padded, strict=True) if not p
    ]
    return sorted(ids), loader.dataset.net.totals()  # type: ignore[attr-defined]


def test_s3_exactly_once(s3_dataset: str) -> None:
    ids, net = _epoch(s3_dataset)
    assert ids == list(range(TOTAL))
    assert net["requests"] > 0 and net["bytes_fetched"] > 0 and net["cache_fills"] == 0


def test_s3_through_the_cache(s3_dataset: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ids, net = _epoch(s3_dataset, cache_dir=cache)
    assert ids == list(range(TOTAL))
    assert net["cache_fills"] == 2 * len(SIZES)  # every shard and index file once
    ids, net = _epoch(s3_dataset, cache_dir=cache)
    assert ids == list(range(TOTAL))
    assert net["cache_fills"] == 0 and net["bytes_fetched"] == 0


def test_s3_missing_object_fails_at_once(s3_dataset: str) -> None:
    with pytest.raises(FileNotFoundError, match="no manifest at s3://"):
        _epoch(s3_dataset.replace("ds/", "nothing/"))
