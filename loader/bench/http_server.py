"""A static HTTP server with Range support on 127.0.0.1, for ``bench --http`` and the tests.

``RangeRequestHandler`` serves files below one directory with single-range
``Range: bytes=a-b`` support (206, and 416 for a range past the end). ``serve_http`` runs one
such server in a child process, so serving costs the benchmarked (main) process nothing, and
maps URL prefixes to directories (``/folder/...`` and ``/shards/...`` for the benchmark).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["RangeRequestHandler", "serve_http"]

_COPY_BYTES = 1 << 20
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """Static files with single-range ``Range`` support; no directory listings; requests are
    not written to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        size = os.path.getsize(path)
        status, lo, hi = HTTPStatus.OK, 0, size
        if rng is not None:
            match = _RANGE.fullmatch(rng.strip())
            if match is None or match.groups() == ("", ""):
                self.send_error(HTTPStatus.BAD_REQUEST)
                return
            first, last = match.groups()
            if first:
                lo, hi = int(first), min(int(last) + 1 if last else size, size)
            else:
                lo, hi = max(size - int(last), 0), size
            if lo >= size or lo >= hi:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(hi - lo))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {lo}-{hi - 1}/{size}")
        self.end_headers()
        if body:
            with open(path, "rb") as f:
                f.seek(lo)
                _copy(f, self.wfile, hi - lo)


def _copy(src: Any, dst: Any, n: int) -> None:
    while n > 0:
        chunk = src.read(min(n, _COPY_BYTES))
        if not chunk:
            return
        dst.write(chunk)
        n -= len(chunk)


class _PrefixHandler(RangeRequestHandler):
    """Maps the first path segment to a directory (``/shards/x.tar`` -> ``roots['shards']``).

    With ``faults`` (a ``_Faults``) a fraction of requests fails: a 503, or a response whose
    connection is dropped after half of its body."""

    roots: Mapping[str, str] = {}
    faults: _Faults | None = None
    protocol_version = "HTTP/1.1"

    def _serve(self, *, body: bool) -> None:
        fault = self.faults.draw() if self.faults is not None else None
        if fault == "503":
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "fault injected (--fault-rate)")
            return
        if fault == "drop" and body:
            self.wfile = _Dropping(self.wfile, self.connection)  # type: ignore[assignment]
            self.close_connection = True
        super()._serve(body=body)

    def translate_path(self, path: str) -> str:
        parts = unquote(urlsplit(path).path).lstrip("/").split("/")
        root = self.roots.get(parts[0]) if parts else None
        if root is None or any(p in ("..", ".") for p in parts[1:]):
            return ""
        return os.path.join(root, *parts[1:])


class _Faults:
    """Draws which requests fail: each with probability ``rate``, alternately a 503 and a
    dropped connection; reproducible from ``seed`` for one order of requests."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate = rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._count = 0

    def draw(self) -> str | None:
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            self._count += 1
            return "503" if self._count % 2 else "drop"


class _Dropping:
    """A response stream that closes the connection once half of the body is written."""

    def __init__(self, wfile: Any, connection: Any) -> None:
        self._wfile, self._connection = wfile, connection
        self._left: int | None = None

    def write(self, data: bytes) -> int:
        if self._left is None:  # the first write after the headers is the body's first chunk
            self._left = max(len(data) // 2, 1)
        if self._left <= 0:
            return len(data)  # the connection is gone: the rest is discarded
        part = data[: self._left]
        self._wfile.write(part)
        self._left -= len(part)
        if self._left <= 0:
            self._wfile.flush()
            self._connection.shutdown(socket.SHUT_RDWR)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wfile, name)


def _run_server(roots: dict[str, str], ready: Any, fault_rate: float = 0.0, seed: int = 0) -> None:
    faults = _Faults(fault_rate, seed) if fault_rate > 0 else None
    handler = type("Handler", (_PrefixHandler,), {"roots": roots, "faults": faults})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    ready.send(server.server_address[1])
    ready.close()
    server.serve_forever(0.2)


@contextmanager
def serve_http(
    roots: Mapping[str, str | os.PathLike[str]], *, fault_rate: float = 0.0, seed: int = 0
) -> Iterator[str]:
    """Serve each directory of ``roots`` under ``/<name>/`` from a child process on 127.0.0.1.
    A ``fault_rate`` fraction of requests (0 to 1) is answered with a 503 or a connection
    dropped mid-body, drawn from ``seed``.

    Yields the base URL (``http://127.0.0.1:PORT/``); the server process is terminated on exit.
    Raises ``NotADirectoryError`` for a root that is not a directory and ``ValueError`` for a
    name that is not one plain path segment.
    """
    if not 0.0 <= fault_rate <= 1.0:
        raise ValueError(f"expected fault_rate between 0 and 1, got fault_rate={fault_rate!r}")
    resolved: dict[str, str] = {}
    for name, root in roots.items():
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"expected a plain URL segment as root name, got name={name!r}")
        if not os.path.isdir(root):
            raise NotADirectoryError(f"expected a directory to serve, got {name}={root}")
        resolved[name] = os.path.abspath(root)
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_run_server, args=(resolved, send, fault_rate, seed), daemon=True)
    process.start()
    send.close()
    try:
        if not receive.poll(30):
            raise RuntimeError("the benchmark HTTP server did not start within 30 s")
        port = receive.recv()
        yield f"http://127.0.0.1:{port}/"
    finally:
        receive.close()
        process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
