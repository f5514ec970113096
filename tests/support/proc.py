"""Helpers for tests that run real ``parallax`` processes."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

__all__ = ["wait_healthy", "stop"]


def wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"parallax serve exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"parallax serve did not become healthy: {log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after 10 s) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
