"""A static HTTP server on 127.0.0.1 that fails on purpose, for the remote-read tests.

``FaultyServer(root)`` serves ``root`` with ``Range`` support (HTTP/1.1, keep-alive) and
answers some requests with a fault instead. ``script(suffix, faults, every=k)`` queues faults
for requests whose path ends in ``suffix``: of those requests, every ``k``-th one (the 1st,
``k+1``-th, ...) takes the next fault from the queue until it is empty (with ``every=2`` a
retried request never meets two faults in a row unless other readers interleave). Faults:

- ``"503"``, ``"429"``, ``"500"``, ``"404"``, ``"403"``: that status, with a short body;
- ``"reset"``: the connection is closed before any response;
- ``"drop"``: headers with the full ``Content-Length``, half the body, then the connection
  is closed (a connection dropped mid-body);
- ``"wrong_length"``: a ``Content-Length`` larger than the body that follows, then close;
- ``"truncate"``: a consistent response (status, length) that carries only the first half of
  the bytes asked for (a short read the client must resume);
- ``"trickle"``: the right body, sent in 8 pieces ``trickle_s`` apart (slower than a short
  client timeout);
- ``"no_range"``: the whole file with status 200, ignoring ``Range``;
- ``"from_zero"``: a 206 of the length asked for, but from byte 0, its ``Content-Range``
  saying so (a proxy that drops the range's start);
- ``"overlong"``: a 206 from the right byte with up to 100 bytes more than asked for, its
  ``Content-Range`` saying so.

The body faults (the last seven) are served to GET requests only: a HEAD leaves them queued.
With ``validators`` (the default) every answer carries an ``ETag`` (from the file's mtime in
nanoseconds and its size, as nginx does) and a ``Last-Modified``; without, neither.

``log`` records ``(method, path, range header, fault or "")`` of every request; ``hang``
(a ``threading.Event``) makes every request wait until it is cleared (a dead mount).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["FAULTS", "FaultyServer"]

FAULTS = (
    "503", "429", "500", "404", "403", "reset", "drop", "wrong_length", "truncate", "trickle",
    "no_range", "from_zero", "overlong",
)  # fmt: skip
_BODY_FAULTS = (
    "drop", "wrong_length", "truncate", "trickle", "no_range", "from_zero", "overlong",
)  # fmt: skip
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class FaultyServer:
    """See the module docstring. Use as a context manager, or call ``close()``."""

    def __init__(self, root: Path, *, trickle_s: float = 0.1, validators: bool = True) -> None:
        self.root = Path(root)
        self.trickle_s = trickle_s
        self.validators = validators
        self.log: list[tuple[str, str, str | None, str]] = []
        self.hang = threading.Event()
        self._lock = threading.Lock()
        self._scripts: list[tuple[str, deque[str], int, list[int], list[str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                owner._handle(self, body=False)

            def do_GET(self) -> None:
                owner._handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self._thread.daemon = True
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __enter__(self) -> FaultyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.hang.clear()
        self._server.shutdown()
        self._server.server_close()

    def script(
        self, suffix: str, faults: list[str], *, every: int = 1, methods: str = "GET HEAD"
    ) -> None:
        """Queue ``faults`` for the ``methods`` requests whose path ends in ``suffix`` (see
        the module doc)."""
        unknown = [f for f in faults if f not in FAULTS]
        if unknown or every < 1:
            raise ValueError(f"expected faults from {FAULTS} and every >= 1, got {unknown} {every}")
        with self._lock:
            self._scripts.append((suffix, deque(faults), every, [0], methods.split()))

    def pending(self) -> int:
        """Faults queued and not yet served."""
        with self._lock:
            return sum(len(script[1]) for script in self._scripts)

    def served(self, fault: str | None = None) -> int:
        """Requests answered with ``fault`` (any fault when ``None``)."""
        with self._lock:
            return sum(1 for *_, f in self.log if f and (fault is None or f == fault))

    def requests_for(self, suffix: str, method: str = "GET") -> list[str | None]:
        """Range headers of the ``method`` requests for paths ending in ``suffix``."""
        with self._lock:
            return [r for m, p, r, _ in self.log if m == method and p.endswith(suffix)]

    def _next_fault(self, path: str, method: str) -> str:
        with self._lock:
            for suffix, queue, every, seen, methods in self._scripts:
                if method not in methods or not queue:
                    continue
                if method == "HEAD" and queue[0] in _BODY_FAULTS:
                    continue
                if path.endswith(suffix) and queue:
                    seen[0] += 1
                    if (seen[0] - 1) % every == 0:
                        return queue.popleft()
            return ""

    def _handle(self, h: BaseHTTPRequestHandler, *, body: bool) -> None:
        while self.hang.is_set():
            time.sleep(0.05)
        path = unquote(urlsplit(h.path).path)
        rng = h.headers.get("Range")
        fault = self._next_fault(path, h.command)
        with self._lock:
            self.log.append((h.command, path, rng, fault))
        file = self.root / path.lstrip("/")
        if ".." in Path(path).parts or not file.is_file():
            return _status(h, 404)
        if fault in ("503", "429", "500", "404", "403"):
            return _status(h, int(fault))
        if fault == "reset":
            h.close_connection = True
            h.connection.shutdown(2)
            return None
        data = file.read_bytes()
        stat = file.stat()
        lo, hi, status = 0, len(data), 200
        if rng is not None and fault != "no_range":
            match = _RANGE.fullmatch(rng.strip())
            if match is None:
                return _status(h, 400)
            lo = int(match[1])
            hi = min(int(match[2]) + 1 if match[2] else len(data), len(data))
            if lo >= len(data) or lo >= hi:
                return _status(h, 416)
            status = 206
            if fault == "from_zero":
                lo, hi = 0, hi - lo
            elif fault == "overlong":
                hi = min(hi + 100, len(data))
        payload = data[lo:hi]
        if fault == "truncate":
            payload, hi = payload[: max(len(payload) // 2, 1)], lo + max(len(payload) // 2, 1)
        length = len(payload) + (len(payload) // 2 + 1 if fault == "wrong_length" else 0)
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(length))
        if self.validators:
            h.send_header("ETag", f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"')
            h.send_header("Last-Modified", formatdate(stat.st_mtime, usegmt=True))
        if status == 206:
            h.send_header("Content-Range", f"bytes {lo}-{hi - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return None
        try:
            if fault in ("drop", "wrong_length"):
                h.wfile.write(payload[: len(payload) // 2] if fault == "drop" else payload)
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(2)
            elif fault == "trickle":
                step = max(len(payload) // 8, 1)
                for i in range(0, len(payload), step):
                    h.wfile.write(payload[i : i + step])
                    h.wfile.flush()
                    time.sleep(self.trickle_s)
            else:
                h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        return None


def _status(h: BaseHTTPRequestHandler, code: int) -> None:
    text = f"fault injected: {code}\n".encode()
    h.send_response(code)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Content-Length", str(len(text)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(text)
