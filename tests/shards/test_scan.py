"""Tests for shards.scan: which files become candidates, which are skipped and why."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from shards.scan import Candidate, list_flat, list_images, scan_folder
from tests.shards.helpers import jpeg, png

# Skips that need the bytes (decided by the writer, not the scan).
CONTENT_SKIPS = ("truncated", "corrupt", "not an image:")


def test_classes_are_sorted_visible_folders_with_empty_ones_kept(quirky: Any) -> None:
    result = scan_folder(quirky.root)
    assert result.classes == quirky.classes
    assert result.empty_classes == quirky.empty_classes
    assert result.root == quirky.root.resolve()


def test_candidates_are_every_image_name_with_its_label_and_size(quirky: Any) -> None:
    result = scan_folder(quirky.root)
    content_skips = {p for p, r in quirky.skipped.items() if r.startswith(CONTENT_SKIPS)}
    assert {c.rel for c in result.candidates} == set(quirky.images) | content_skips
    for cand in result.candidates:
        assert cand.size == (quirky.root / cand.rel).stat().st_size > 0
        if cand.rel in quirky.images:
            assert cand.label == quirky.images[cand.rel].label
        assert cand.rel.split("/")[0] == quirky.classes[cand.label]
    assert len({c.rel for c in result.candidates}) == len(result.candidates)


def test_every_other_entry_is_skipped_with_its_reason(quirky: Any) -> None:
    result = scan_folder(quirky.root)
    got = {s.path: s.reason for s in result.skipped}
    expected = {p: r for p, r in quirky.skipped.items() if not r.startswith(CONTENT_SKIPS)}
    assert set(got) == set(expected)
    for path, prefix in expected.items():
        assert got[path].startswith(prefix), (path, got[path])


def test_file_symlink_is_followed_and_keeps_its_own_name(quirky: Any) -> None:
    rels = {c.rel for c in scan_folder(quirky.root).candidates}
    assert "n00000001/link.jpg" in rels
    assert not any("outside" in r or "target" in r for r in rels)


def test_order_is_sorted_and_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    names = ["b.jpg", "a.jpg", "C.jpg", "sub/z.jpg", "a b.jpg", "é.jpg"]
    for root, order in ((tmp_path / "x", names), (tmp_path / "y", names[::-1])):
        for k in ("n2", "n1"):
            (root / k / "sub").mkdir(parents=True)
        for k in ("n2", "n1"):
            for name in order:
                (root / k / name).write_bytes(jpeg(len(name)))
    x, y = scan_folder(tmp_path / "x"), scan_folder(tmp_path / "y")
    assert x.candidates == y.candidates
    rels = [c.rel for c in x.candidates]
    assert [c.label for c in x.candidates] == sorted(c.label for c in x.candidates)
    assert rels[0].startswith("n1/") and rels[-1].startswith("n2/")
    assert scan_folder(tmp_path / "x") == x


def test_symlink_loops_of_several_shapes_terminate(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "n1" / "a" / "b").mkdir(parents=True)
    (root / "n1" / "a" / "b" / "img.jpg").write_bytes(jpeg(1))
    os.symlink("../..", root / "n1" / "a" / "b" / "up")  # -> n1: an ancestor
    os.symlink(".", root / "n1" / "self_dir")  # -> n1 itself
    os.symlink("self_link", root / "n1" / "self_link")  # ELOOP on stat
    os.symlink(root, root / "n1" / "to_root")
    result = scan_folder(root)
    assert [c.rel for c in result.candidates] == ["n1/a/b/img.jpg"]
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons["n1/a/b/up"].startswith("symlink loop")
    assert reasons["n1/self_dir"].startswith("symlink loop")
    assert reasons["n1/to_root"].startswith("symlink loop")
    assert reasons["n1/self_link"] == "broken symlink"


def test_symlinked_folder_that_is_not_a_loop_is_walked(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "n1").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.png").write_bytes(png(3))
    os.symlink(tmp_path / "elsewhere", root / "n1" / "linked")
    os.symlink(tmp_path / "elsewhere", root / "n2")
    result = scan_folder(root)
    assert result.classes == ["n1", "n2"]
    assert result.candidates == [
        Candidate("n1/linked/x.png", 0, (tmp_path / "elsewhere" / "x.png").stat().st_size),
        Candidate("n2/x.png", 1, (tmp_path / "elsewhere" / "x.png").stat().st_size),
    ]


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        scan_folder(tmp_path / "f")


@pytest.mark.parametrize("content", ["nothing", "only_files", "only_hidden"])
def test_root_without_class_folders(tmp_path: Path, content: str) -> None:
    root = tmp_path / "src"
    root.mkdir()
    if content == "only_files":
        (root / "a.jpg").write_bytes(b"\xff\xd8\xff")
    elif content == "only_hidden":
        (root / ".git").mkdir()
    with pytest.raises(ValueError, match="expected class folders"):
        scan_folder(root)


def test_classes_only_hidden_or_non_images_are_empty(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "n1").mkdir(parents=True)
    (root / "n2").mkdir()
    (root / "n1" / "readme.md").write_text("x")
    (root / "n2" / ".keep").write_text("")
    result = scan_folder(root)
    assert result.candidates == []
    assert result.empty_classes == ["n1", "n2"]


# --- list_flat, list_images ------------------------------------------------------------------


def test_list_flat_keeps_the_images_directly_in_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "val"
    (root / "sub").mkdir(parents=True)
    for name in ("b.JPEG", "a.png", ".hidden.jpg", "notes.txt", "sub/inner.jpg"):
        (root / name).write_bytes(jpeg(len(name)))
    (root / "zero.jpg").write_bytes(b"")
    os.symlink(root / "missing.jpg", root / "broken.jpg")
    candidates, skipped = list_flat(root)
    assert [(c.rel, c.label) for c in candidates] == [("a.png", -1), ("b.JPEG", -1)]
    assert candidates[0].size == (root / "a.png").stat().st_size
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {".hidden.jpg", "notes.txt", "sub", "zero.jpg", "broken.jpg"}
    assert reasons["sub"].startswith("folder in a flat source")
    assert reasons["broken.jpg"] == "broken symlink"
    assert reasons["zero.jpg"].startswith("empty file")


def test_list_images_takes_any_layout(tmp_path: Path) -> None:
    root = tmp_path / "any"
    (root / "n1" / "deep").mkdir(parents=True)
    for name in ("top.jpg", "n1/a.jpg", "n1/deep/b.png", "n1/.hidden.jpg", "n1/readme.md"):
        (root / name).write_bytes(jpeg(len(name)))
    os.symlink(".", root / "n1" / "loop")
    assert [c.rel for c in list_images(root)] == ["n1/a.jpg", "n1/deep/b.png", "top.jpg"]


@pytest.mark.parametrize("listing", [list_flat, list_images])
def test_listing_a_missing_folder_or_a_file(tmp_path: Path, listing: Any) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        listing(tmp_path / "nope")
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        listing(tmp_path / "f")
