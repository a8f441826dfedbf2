"""Loader test helpers: tiny shards in our format, and an HTTP server with Range support.

``write_test_shards`` writes shards exactly as the format prescribes (``KEY.jpg``, ``KEY.cls``,
``KEY.json`` per sample, a sidecar index and a manifest), with these conventions: the sample
with global id ``g`` has key ``make_key(g, total)``, label ``g % 3`` (classes ``c0 c1 c2``)
and image payload ``image_bytes(g)``.

Test modules import these by name; ``conftest.py`` holds only the fixtures built on them.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from loader.bench.http_server import RangeRequestHandler
from loader.dataloader import make_loader
from loader.tracker import DuplicateTracker, EpochCounts
from shards.format import (
    INDEX_DTYPE,
    end_of_archive,
    index_name,
    make_key,
    padding,
    shard_name,
    tar_member_header,
)
from shards.manifest import Manifest, ShardEntry

CLASSES = ("c0", "c1", "c2")


def default_image_bytes(gid: int) -> bytes:
    """A small fake JPEG payload, different for every id and of varying length."""
    return b"\xff\xd8\xff\xe0" + f"image-{gid}-".encode() * (1 + gid % 7)


def label_of(gid: int) -> int:
    return gid % len(CLASSES)


def write_test_shards(
    dir: Path,
    samples_per_shard: list[int],
    *,
    image_bytes: Callable[[int], bytes] = default_image_bytes,
    with_index: bool = True,
) -> Path:
    """Write ``shard-NNNNNN.tar`` files (plus sidecars when ``with_index``) and a manifest into
    ``dir``; returns the manifest path."""
    dir.mkdir(parents=True, exist_ok=True)
    total = sum(samples_per_shard)
    entries: list[ShardEntry] = []
    gid = 0
    for number, count in enumerate(samples_per_shard):
        out = io.BytesIO()
        rows = []
        for _ in range(count):
            key = make_key(gid, total)
            start = out.tell()
            image = image_bytes(gid)
            meta = json.dumps({"path": f"c/{key}.jpg", "class": CLASSES[label_of(gid)]}).encode()
            image_offset = start + 512
            for name, payload in (
                (f"{key}.jpg", image),
                (f"{key}.cls", str(label_of(gid)).encode()),
                (f"{key}.json", meta),
            ):
                out.write(tar_member_header(name, len(payload)) + payload + padding(len(payload)))
            rows.append((start, out.tell(), image_offset, len(image), label_of(gid)))
            gid += 1
        out.write(end_of_archive())
        data = out.getvalue()
        name = shard_name(number)
        (dir / name).write_bytes(data)
        index_url = index_sha = None
        if with_index:
            buf = io.BytesIO()
            np.save(buf, np.array(rows, dtype=INDEX_DTYPE).reshape(-1), allow_pickle=False)
            (dir / index_name(name)).write_bytes(buf.getvalue())
            index_url, index_sha = index_name(name), hashlib.sha256(buf.getvalue()).hexdigest()
        entries.append(
            ShardEntry(
                url=name,
                nsamples=count,
                filesize=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                first_index=gid - count,
                index_url=index_url,
                index_sha256=index_sha,
            )
        )
    path = dir / "manifest.json"
    Manifest(shards=entries, classes=list(CLASSES), name="test").save(path)
    return path


class HttpServers:
    """Factory fixture: ``http_server(root)`` serves ``root`` on 127.0.0.1 and returns its base
    URL (ending in ``/``); ``requests`` logs ``(method, path, range header)`` of every server."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        self._servers: list[ThreadingHTTPServer] = []

    def __call__(self, root: Path) -> str:
        log = self.requests

        class Handler(RangeRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def parse_request(self) -> bool:
                parsed = super().parse_request()
                if parsed:
                    path = self.path.split("?", 1)[0]
                    log.append((self.command, path, self.headers.get("Range")))
                return parsed

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    def ranged_gets(self, suffix: str) -> list[tuple[int, int]]:
        """``(first, last)`` byte pairs of the ranged GETs for paths ending in ``suffix``."""
        out = []
        for method, path, rng in self.requests:
            if method == "GET" and path.endswith(suffix) and rng:
                first, last = rng.removeprefix("bytes=").split("-")
                out.append((int(first), int(last)))
        return out

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


def jpeg_bytes(gid: int) -> bytes:
    """A real 20x24 JPEG whose colours depend on ``gid`` (decodable image bytes for a sample)."""
    image = np.zeros((20, 24, 3), np.uint8)
    image[:, :, 0] = gid * 5 % 256
    image[:, :12, 1] = 255 - gid * 3 % 256
    image[10:, :, 2] = gid * 11 % 256
    ok, data = cv2.imencode(".jpg", image)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the test image of gid={gid}")
    return data.tobytes()


def track(loader: Any, num_samples: int) -> tuple[EpochCounts, int]:
    """One epoch's counts and its number of batches."""
    tracker = DuplicateTracker(num_samples)
    batches = 0
    for batch in loader:
        tracker.update(batch.ids, batch.padded)
        batches += 1
    return tracker.end_epoch(), batches


def loader_over(source: Any, num_workers: int = 2, **options: Any) -> Any:
    """A small ``make_loader`` for tests: batch 4, 8 px, shuffle buffer 4, one item in flight."""
    options = {"batch_size": 4, "image_size": 8, "shuffle_buffer": 4, **options}
    if num_workers:
        options["prefetch_factor"] = 1
    return make_loader(source, num_workers=num_workers, **options)
