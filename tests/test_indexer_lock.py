"""indexer.lock: one indexer per index; the owner's PID in the refusal; stale locks taken over."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer.lock import IndexLock

from retrieval.core.errors import IndexLockedError

HOLDER = """
import sys, time
from indexer.lock import IndexLock
lock = IndexLock(sys.argv[1]); lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_second_lock_is_refused_naming_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "index" / "lock"
    with IndexLock(path):
        assert path.read_text().split()[0] == str(os.getpid())
        with pytest.raises(IndexLockedError, match=rf"being updated by process {os.getpid()}\b"):
            IndexLock(path).acquire()
    assert not path.exists()
    with IndexLock(path):  # free again after release
        pass


def test_a_lock_file_left_behind_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.write_text("999999999 some-host\n")  # a crashed run: the file is there, nobody holds it
    with IndexLock(path):
        assert path.read_text().split()[0] == str(os.getpid())


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexLockedError, match=f"process {holder.pid}"):
            IndexLock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            with IndexLock(path):
                break
        except IndexLockedError:  # the kernel drops the dead process's lock promptly; allow a moment
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_place_that_cannot_hold_a_lock_is_a_project_error(tmp_path: Path) -> None:
    from retrieval.core.errors import IndexStoreError

    (tmp_path / "a-file").write_text("")
    with pytest.raises(IndexStoreError, match="cannot lock the index"):
        IndexLock(tmp_path / "a-file" / "lock").acquire()
