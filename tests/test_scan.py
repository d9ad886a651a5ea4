"""indexer.scan: the walk (recursion, hidden entries, symlinks, vanishing files) and content sniffing."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from indexer.scan import content_hash, scan, sniff


def paths(root: Path, **kwargs) -> list[str]:
    return [entry.path for entry in scan(root, **kwargs)]


def test_walks_recursively_in_sorted_order_with_stat(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    for name in ("z.jpg", "a.PNG", "b/c/deep.webp", "b/x.tiff"):
        (tmp_path / name).write_bytes(b"12345")
    entries = list(scan(tmp_path))
    assert [e.path for e in entries] == ["a.PNG", "z.jpg", "b/x.tiff", "b/c/deep.webp"]
    stat = (tmp_path / "z.jpg").stat()
    assert (entries[1].size, entries[1].mtime_ns) == (5, stat.st_mtime_ns)


def test_skips_hidden_entries_other_suffixes_and_named_folders(tmp_path: Path) -> None:
    for name in (".vlsearch/thumb.jpg", ".hidden/a.jpg", ".dotfile.jpg", "notes.txt", "clip.mp4",
                 "myindex/x.jpg", "keep.jpg", "no_suffix"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    entries = {e.path: e for e in scan(tmp_path, skip=[tmp_path / "myindex", tmp_path / "missing"])}
    assert sorted(entries) == ["keep.jpg", "no_suffix"]
    assert entries["keep.jpg"].named_as_image and not entries["no_suffix"].named_as_image


def test_symlink_loops_do_not_hang_and_linked_files_count(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "img.jpg").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a -> root -> a -> ...
    os.symlink(tmp_path / "a" / "img.jpg", tmp_path / "link.jpg")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dangling.jpg")  # listed (by its lstat), to be reported
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")  # no image suffix: not a candidate
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block: never a candidate
    entries = {entry.path: entry for entry in scan(tmp_path)}
    assert list(entries) == ["dangling.jpg", "link.jpg", "a/img.jpg"]
    assert entries["dangling.jpg"].size == os.lstat(tmp_path / "dangling.jpg").st_size


def test_vanished_and_unreadable_folders_are_skipped(tmp_path: Path) -> None:
    assert paths(tmp_path / "does-not-exist") == []
    (tmp_path / "a.jpg").write_bytes(b"x")
    walk = scan(tmp_path)
    (tmp_path / "a.jpg").unlink()  # the generator has not listed the folder yet
    assert list(walk) == []


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_sniff_recognises_pillow_formats(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format=fmt)
    assert sniff(buffer.getvalue()[:32]) == fmt


@pytest.mark.parametrize("head", [b"", b"hello world", b"BM but not a bitmap header!!", b"RIFF\x00\x00\x00\x00WAVE",
                                  b"<html><body>", b"\x00\x00\x00\x18ftypheic"])
def test_sniff_rejects_other_content(head: bytes) -> None:
    assert sniff(head) is None


def test_content_hash_depends_on_bytes_only() -> None:
    assert content_hash(b"abc") == content_hash(b"abc") != content_hash(b"abd")
    assert len(content_hash(b"")) == 32
