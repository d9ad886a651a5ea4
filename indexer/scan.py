"""Walk a folder for image files, and tell image content from other bytes.

The walk only looks at names and ``stat`` (so an unchanged folder costs one ``stat`` per file): it is
recursive, skips hidden entries (the index folder ``.vlsearch`` among them), follows symlinks but never
enters a folder twice (no symlink loop can hang it), and ignores files that vanish while it runs. A
symlink that leads nowhere (dangling, or a loop) is listed with its own ``lstat``, so that the indexer
can report it instead of dropping it silently.
Whether a file really is an image is decided by its first bytes (:func:`sniff`), read later and only
for files that are new or changed.
"""
from __future__ import annotations

import hashlib
import os
from operator import attrgetter
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

# Files with these suffixes, or with none at all, are candidates; content decides (see sniff).
IMAGE_SUFFIX_LIST = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".bmp", ".dib", ".gif", ".tif",
                     ".tiff")  # in the order messages list them
IMAGE_SUFFIXES = frozenset(IMAGE_SUFFIX_LIST)
SNIFF_BYTES = 32  # enough for every signature below
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}  # the DIB header sizes that follow "BM"


class FileEntry(NamedTuple):
    """One candidate file, as the walk saw it (a tuple: a walk of 100k files makes 100k of them)."""

    path: str  # relative to the scanned root, '/'-separated
    size: int  # bytes
    mtime_ns: int
    named_as_image: bool  # has an image suffix: content that is not an image is an error, not a skip


def scan(root: str | os.PathLike, skip: Iterable[str | os.PathLike] = ()) -> Iterator[FileEntry]:
    """Yield candidate files under ``root`` in a stable (sorted, depth-first) order.

    ``skip`` names folders never to enter even when they are not hidden (e.g. an index stored inside
    the folder under another name).
    """
    root = Path(root)
    skipped = {key for key in map(_folder_key, skip) if key is not None}
    visited: set[tuple[int, int]] = set()
    stack = [(os.fspath(root), "")]
    while stack:
        folder, prefix = stack.pop()
        key = _folder_key(folder)
        if key is None or key in visited or key in skipped:
            continue  # vanished, already walked (a symlink loop or a second link), or skipped
        visited.add(key)
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=_name)
        except OSError:  # vanished, unreadable, or replaced by a file since it was listed
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                kind = _kind(entry)
                if kind == "dir":  # followed symlinks too; the visited set cuts loops
                    subfolders.append((entry.path, f"{prefix}{entry.name}/"))
                    continue
                dot = entry.name.rfind(".")
                suffix = entry.name[dot:].lower() if dot > 0 else ""
                if suffix and suffix not in IMAGE_SUFFIXES:
                    continue
                if kind == "file":
                    stat = entry.stat()
                elif kind == "broken" and suffix:  # an image name that leads nowhere: the indexer reports it
                    stat = entry.stat(follow_symlinks=False)
                else:  # a socket, pipe or device (opening some would block)
                    continue
            except OSError:  # vanished mid-scan
                continue
            yield FileEntry(prefix + entry.name, stat.st_size, stat.st_mtime_ns, bool(suffix))
        stack.extend(reversed(subfolders))  # pop in sorted order


_name = attrgetter("name")


def _kind(entry: os.DirEntry) -> str:
    """'dir' or 'file' (following symlinks), 'broken' (a symlink to nothing, or a loop) or 'other'."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
    except OSError:  # a symlink loop (ELOOP) or an unreadable target
        pass
    return "broken" if entry.is_symlink() and not os.path.exists(entry.path) else "other"


def _folder_key(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def sniff(head: bytes) -> str | None:
    """Pillow's format name for the image whose file starts with ``head``, or None for anything else."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF and BigTIFF
        return "TIFF"
    return None


def printable(path: str) -> str:
    """A file name for a terminal line: bytes that are not UTF-8 shown as U+FFFD, control characters (a newline,
    an escape sequence) shown escaped. Only for display: the index keeps every name exactly."""
    text = os.fsencode(path).decode("utf-8", "replace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def content_hash(data: bytes) -> str:
    """A fast 128-bit hash of a file's bytes: equal hashes mean the same image, wherever it lives."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()
