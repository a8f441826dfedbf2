"""Fixtures of the loader tests; the helpers they use are in ``tests.loader.helpers``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.loader.helpers import HttpServers


@pytest.fixture
def http_server() -> Iterator[HttpServers]:
    servers = HttpServers()
    yield servers
    servers.close()
