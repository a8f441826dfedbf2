"""Service: FastAPI app for benchmarks, training-job stats, Prometheus metrics and a dashboard.

The names are imported on first use, so ``shardfeed shard`` (whose console script lives in this
package) starts without loading the web stack.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Settings", "create_app", "run_demo"]

_HOMES = {"Settings": "server.settings", "create_app": "server.app", "run_demo": "server.demo"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'server' has no attribute {name!r}")
