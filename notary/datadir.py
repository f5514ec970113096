"""One ``parallax serve`` per data directory: an advisory lock held for the process's life.

``serve`` (and ``store compact``) take ``<data-dir>/serve.lock`` with ``flock``
(exclusive, non-blocking) before they open the store or write anything.  The
lock is released by the kernel when the process exits, however it exits, so a
crashed notary never leaves a stale lock behind.  The file holds the owner's
pid, for the message a second process prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from notary.errors import ConfigError, DataDirLocked

__all__ = ["LOCK_FILE", "DataDirLock"]

LOCK_FILE = "serve.lock"


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/serve.lock``.  Use as a context manager or acquire/release."""

    def __init__(self, data_dir: str | Path, purpose: str = "parallax serve") -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> "DataDirLock":
        """Take the lock or raise :class:`DataDirLocked` (naming the holder's pid) at once."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            finally:
                os.close(fd)
            raise DataDirLocked(
                f"data dir {self.path.parent} is in use by another process (pid {holder}); "
                f"one {self.purpose} per data dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "DataDirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
