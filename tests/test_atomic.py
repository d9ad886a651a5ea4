"""retrieval.core.atomic.atomic_write: the one way a file is replaced (checkpoints, FAISS, caches, thumbnails)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from retrieval.core import atomic
from retrieval.core.atomic import atomic_write


def test_the_new_file_replaces_the_old_whole(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.pt"  # the folder is made
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".model.pt.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"first")
        assert not target.exists()  # nothing visible before the rename
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"second")
    assert target.read_bytes() == b"second" and sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not a temporary file's 0600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "vectors.3.faiss"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["vectors.3.faiss"]


def test_durable_writes_sync_the_file_and_its_folder_and_caches_do_not(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    monkeypatch.setattr(atomic, "_fsync", lambda path, flags: synced.append(Path(path).name))
    with atomic_write(tmp_path / "a.pt") as tmp:
        tmp.write_bytes(b"x")
        name = tmp.name
    assert synced == [name, tmp_path.name]
    synced.clear()
    with atomic_write(tmp_path / "thumb.jpg", durable=False) as tmp:
        tmp.write_bytes(b"x")
    assert synced == []
