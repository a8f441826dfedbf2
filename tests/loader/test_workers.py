"""Tests for loader/_workers.py: the one module that reads torch DataLoader internals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loader._workers import (
    TORCH_PRIVATE,
    TorchInternalsError,
    check_torch_internals,
    loader_iterator,
    queued_items,
    shutdown_workers,
)
from loader.dataloader import make_loader
from tests.loader.helpers import write_test_shards


def test_the_installed_torch_has_every_private_attribute_we_read(tmp_path: Path) -> None:
    manifest = write_test_shards(tmp_path, [6, 6])
    loader = make_loader(manifest, batch_size=4, num_workers=2, decode="none", seed=0)
    iterator = iter(loader)
    next(iterator)
    inner = loader_iterator(loader)
    assert inner is not None, "a persistent loader keeps its iterator between epochs"
    try:
        check_torch_internals(loader, inner)
        queued = queued_items(inner)
        assert queued is None or queued >= 0
    finally:
        shutdown_workers(loader, None)
    assert loader_iterator(loader) is None


def test_a_renamed_attribute_fails_naming_it_and_the_module_to_update() -> None:
    class Renamed:
        pass

    class Loader:
        _iterator = None

    with pytest.raises(TorchInternalsError) as caught:
        check_torch_internals(Loader(), Renamed())
    message = str(caught.value)
    for name in TORCH_PRIVATE:
        if name != "_iterator":
            assert name in message
    assert "_iterator (" not in message
    assert torch.__version__ in message and "loader/_workers.py" in message


def test_no_other_module_reads_torch_private_dataloader_attributes() -> None:
    root = Path(__file__).resolve().parents[2]
    allowed = {root / "loader" / "_workers.py"}
    offenders: list[str] = []
    names = [n for n in TORCH_PRIVATE if n != "_iterator"]
    for path in sorted((root / "loader").rglob("*.py")) + sorted((root / "server").rglob("*.py")):
        if path in allowed:
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(root)}: {n}" for n in names if f'"{n}"' in text]
    assert offenders == [], offenders
