from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.paths import MissingInput, PathRefused, check_bench_inputs, resolve_under_roots


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = (tmp_path / "root").resolve()
    outside = (tmp_path / "outside").resolve()
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("x")
    return root, outside


def write_manifest(folder: Path, urls: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shardlist = [{"url": u, "nsamples": 1} for u in urls]
    (folder / "manifest.json").write_text(json.dumps({"shardlist": shardlist}))


def test_relative_and_absolute_paths_inside_a_root_resolve(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    assert resolve_under_roots("data", [root], "folder") == root / "data"
    assert resolve_under_roots(str(root / "data"), [root], "folder") == root / "data"
    assert resolve_under_roots("data/../data", [root], "folder") == root / "data"


def test_dotdot_out_of_the_root_is_refused_with_the_reason(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with pytest.raises(PathRefused, match=r"climbs out of the data roots with '\.\.'") as info:
        resolve_under_roots("../outside/secret", [root], "folder")
    assert info.value.field == "folder"


def test_absolute_path_outside_is_refused(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    with pytest.raises(PathRefused, match="is outside the data roots"):
        resolve_under_roots(str(outside), [root], "shards")


def test_symlink_out_of_the_root_is_refused(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    (root / "escape").symlink_to(outside)
    with pytest.raises(PathRefused, match="symlink that points outside"):
        resolve_under_roots("escape/secret", [root], "shards")


def test_symlink_staying_inside_is_fine(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    (root / "alias").symlink_to(root / "data")
    assert resolve_under_roots("alias", [root], "folder") == root / "data"


def test_a_second_root_is_allowed(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    assert resolve_under_roots(str(outside / "secret"), [root, outside], "x") == outside / "secret"


@pytest.mark.parametrize("value", ["http://example.com/m.json", "file:///etc/passwd", "s3://b/k"])
def test_urls_are_refused(layout: tuple[Path, Path], value: str) -> None:
    with pytest.raises(PathRefused, match="is a URL"):
        resolve_under_roots(value, [layout[0]], "shards")


def test_no_roots_refuses_everything(layout: tuple[Path, Path]) -> None:
    with pytest.raises(PathRefused, match="no data roots are configured"):
        resolve_under_roots(str(layout[0]), [], "shards")


def test_nul_byte_is_a_value_error(layout: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="NUL"):
        resolve_under_roots("a\x00b", [layout[0]], "shards")


def test_bench_inputs_checks_the_manifest_shards(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    write_manifest(root / "good", ["shard-000000.tar"])
    assert check_bench_inputs("data", "good", [root]) == (str(root / "data"), str(root / "good"))
    assert check_bench_inputs(None, "good/manifest.json", [root])[1] == str(
        root / "good" / "manifest.json"
    )
    write_manifest(root / "sneaky", ["../../outside/secret"])
    with pytest.raises(PathRefused, match="lists shard '../../outside/secret'"):
        check_bench_inputs(None, "sneaky", [root])
    write_manifest(root / "remote", ["http://example.com/shard.tar"])
    with pytest.raises(PathRefused, match="is a URL"):
        check_bench_inputs(None, "remote", [root])
    write_manifest(root / "absolute", [str(outside / "secret")])
    with pytest.raises(PathRefused, match="outside the data roots"):
        check_bench_inputs(None, "absolute", [root])


def test_bench_inputs_missing_things_are_named(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    with pytest.raises(MissingInput, match="manifest.json") as info:
        check_bench_inputs(None, "data", [root])
    assert info.value.field == "shards"
    write_manifest(root / "good", ["shard-000000.tar"])
    with pytest.raises(MissingInput, match="image folder") as info:
        check_bench_inputs("nothing-here", "good", [root])
    assert info.value.field == "folder"
    (root / "bad").mkdir()
    (root / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(MissingInput, match="not JSON"):
        check_bench_inputs(None, "bad", [root])
    (root / "bad" / "manifest.json").write_text("[1, 2]")
    with pytest.raises(MissingInput, match="no shardlist"):
        check_bench_inputs(None, "bad", [root])


def test_refusal_comes_before_existence(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    with pytest.raises(PathRefused):
        check_bench_inputs(None, str(outside / "does-not-exist"), [root])
