"""The index lock: one ``vlsearch index`` at a time per index; a lock left by a killed process is taken over.

The lock file holds the owner's "PID HOST". Where ``fcntl`` exists (POSIX) the owner also holds an
``flock`` on it, which the kernel drops when the process dies however it dies, so staleness never rests
on guessing from a PID; elsewhere a lock whose PID no longer runs on this host counts as stale.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from types import TracebackType

from retrieval.core.errors import IndexLockedError, IndexStoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]



def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class IndexLock:
    """Context manager: hold the lock file at ``path`` or raise :class:`IndexLockedError` naming the owner."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def _owner(self) -> tuple[int | None, str]:
        try:
            pid, _, host = self.path.read_text().strip().partition(" ")
            return int(pid), host
        except (OSError, ValueError):
            return None, ""

    def _refuse(self) -> IndexLockedError:
        pid, host = self._owner()
        who = f"process {pid}" if pid else "another process"
        if pid and host and host != socket.gethostname():
            who += f" on {host}"
        return IndexLockedError(f"the index {self.path.parent} is being updated by {who}; wait for it to finish "
                                f"(or, if no such process runs, delete {self.path})")

    def acquire(self) -> None:
        stamp = f"{os.getpid()} {socket.gethostname()}\n".encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if fcntl is None:  # pragma: no cover - Windows
                self._acquire_by_pid(stamp)
            else:
                self._acquire_by_flock(stamp)
        except OSError as exc:  # a read-only or missing place for the index
            raise IndexStoreError(f"cannot lock the index {self.path.parent}: {exc.strerror or exc}") from exc

    def _acquire_by_flock(self, stamp: bytes) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse() from None
            try:  # the file we locked must still be the one at the path (an owner unlinks it on release)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)  # whatever was there was left by a dead owner
        os.write(fd, stamp)
        self._fd = fd

    def _acquire_by_pid(self, stamp: bytes) -> None:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid, host = self._owner()
                if pid is not None and (host != socket.gethostname() or _pid_alive(pid)):
                    raise self._refuse() from None
                self.path.unlink(missing_ok=True)  # stale
                continue
            os.write(fd, stamp)
            self._fd = fd
            return
        raise self._refuse()

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked, so no one else's lock is removed
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "IndexLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
