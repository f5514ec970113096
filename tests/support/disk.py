"""A real, small file system for tests of a full disk: a tmpfs mounted for the test (needs root, as CI runs)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

__all__ = ["small_disk"]


@contextlib.contextmanager
def small_disk(parent: Path, kib: int) -> Iterator[Path]:
    """Mount a tmpfs of ``kib`` KiB under ``parent`` and yield it; unmounted afterwards.

    Skips the test where mounting is impossible (not root, no tmpfs).
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = parent / f"disk{kib}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
