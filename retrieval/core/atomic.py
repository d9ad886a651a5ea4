"""The one way vlsearch replaces a file: readers see the old file or the whole new one, never a part.

Durability is the caller's choice, stated here once: checkpoints, feature caches and FAISS indexes are
``durable`` (the file and then its folder are fsynced before and after the rename, so a power cut leaves
the old or the new file); thumbnails are a cache that is re-made when lost, so they skip the fsyncs.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_write(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is renamed over ``path``.

    On an error (or an interrupt) the temporary file is removed and ``path`` is untouched. The temporary
    name is ``.NAME.*.tmp``, so a writer that was killed leaves only such files for its successor to sweep.
    The new file gets the usual permissions (0666 less the umask), not a temporary file's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
