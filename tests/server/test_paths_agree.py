"""The service's path check and the loader's path handling agree (docs/architecture.md, section
"Service"): what the service confines is exactly what the loader opens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loader.sources import resolve_source
from server.paths import PathRefused, check_bench_inputs
from tests.loader.helpers import write_test_shards


def _retarget(manifest: Path, **fields: str) -> None:
    doc = json.loads(manifest.read_text())
    doc["shardlist"][0].update(fields)
    manifest.write_text(json.dumps(doc))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    return root


def test_index_url_outside_the_roots_is_refused(root: Path, tmp_path: Path) -> None:
    manifest = write_test_shards(root / "shards", [2])
    secret = tmp_path / "secret.npy"
    secret.write_text("not for you")
    _retarget(manifest, index_url=str(secret))
    with pytest.raises(PathRefused, match="index_url") as info:
        check_bench_inputs(None, str(root / "shards"), [root])
    assert "not for you" not in str(info.value)
    _retarget(manifest, index_url="../../secret.npy")
    with pytest.raises(PathRefused, match="index_url"):
        check_bench_inputs(None, str(root / "shards"), [root])


def test_lexical_folding_does_not_escape_through_a_symlink(root: Path, tmp_path: Path) -> None:
    """The service resolves ``m/link/../../../x`` inside the root; the loader must open that
    same file, not the lexical ``m/link/../../../x`` outside it."""
    write_test_shards(root / "x", [2])
    write_test_shards(tmp_path / "x", [3])
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "m").mkdir()
    (root / "m" / "link").symlink_to(root / "a" / "b" / "c")
    (root / "m" / "manifest.json").write_text((root / "x" / "manifest.json").read_text())
    rel = "link/../../../x/shard-000000.tar"
    _retarget(root / "m" / "manifest.json", url=rel, index_url=rel[: -len(".tar")] + ".idx.npy")
    _, shards = check_bench_inputs(None, str(root / "m"), [root])
    source = resolve_source(shards)
    assert Path(source.shards[0].url) == root / "x" / "shard-000000.tar"
    assert source.shards[0].nsamples == 2


def test_a_resolved_path_with_braces_is_not_expanded(root: Path) -> None:
    write_test_shards(root / "set{1,2}", [2])
    _, shards = check_bench_inputs(None, "set{1,2}", [root])
    source = resolve_source(shards)
    assert source.num_samples == 2
    assert Path(source.shards[0].url).parent == root / "set{1,2}"


def test_the_403_message_does_not_say_where_a_symlink_points(root: Path, tmp_path: Path) -> None:
    hidden = tmp_path / "hidden-place-7f3a"
    hidden.mkdir()
    (root / "escape").symlink_to(hidden)
    with pytest.raises(PathRefused, match="symlink") as info:
        check_bench_inputs(str(root / "escape"), str(root), [root])
    assert "hidden-place-7f3a" not in str(info.value)


def _image_folder(root: Path) -> Path:
    src = root / "src"
    (src / "cat").mkdir(parents=True)
    (src / "cat" / "a.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 10)
    return src


def test_map_mode_files_linking_outside_the_roots_are_refused(root: Path, tmp_path: Path) -> None:
    write_test_shards(root / "shards", [2])
    src = _image_folder(root)
    (src / "cat" / "b.jpg").symlink_to(src / "cat" / "a.jpg")
    assert check_bench_inputs("src", "shards", [root])[0] == str(src)
    secret = tmp_path / "private-9c1e" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(b"\xff\xd8\xff" + b"s" * 10)
    (src / "cat" / "evil.jpg").symlink_to(secret)
    with pytest.raises(PathRefused, match=r"cat/evil\.jpg") as info:
        check_bench_inputs("src", "shards", [root])
    assert info.value.field == "folder" and "private-9c1e" not in str(info.value)


def test_a_class_folder_linking_outside_the_roots_is_refused(root: Path, tmp_path: Path) -> None:
    write_test_shards(root / "shards", [2])
    src = _image_folder(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "z.jpg").write_bytes(b"\xff\xd8\xff" + b"z" * 10)
    (src / "dog").symlink_to(elsewhere)
    with pytest.raises(PathRefused, match=r"dog/z\.jpg"):
        check_bench_inputs("src", "shards", [root])
