"""A real SOCKS5 server for tests: Debian's Dante (``danted``, package ``dante-server``).

Used on loopback (tests/test_socks_loopback.py) and inside a lab namespace
(tests/lab/test_lab_socks.py).  The configuration allows CONNECT only, without
authentication (a client's offer of username/password, as Parallax sends for
Tor stream isolation, is answered with "no authentication"), from ``clients``
to anywhere, leaving from ``external``.  Dante logs to stderr.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["Dante", "danted_unavailable_reason", "dante_config", "free_port", "require_dante", "running_dante"]


def danted_unavailable_reason() -> str | None:
    """None when ``danted`` can run here, else why not (for ``pytest.skip``)."""
    if not shutil.which("danted"):
        return "danted is not installed (apt-get install dante-server)"
    if os.geteuid() != 0:
        return "danted needs root here (it switches to user nobody)"
    return None


def dante_config(path: Path, *, listen: str, port: int, external: str, clients: str) -> Path:
    """Write a minimal danted.conf to ``path``: CONNECT from ``clients`` (CIDR) to anywhere."""
    path.write_text(
        "logoutput: stderr\n"
        f"internal: {listen} port = {port}\n"
        f"external: {external}\n"
        "socksmethod: none\n"
        "clientmethod: none\n"
        "user.privileged: root\n"
        "user.unprivileged: nobody\n"
        f"client pass {{\n  from: {clients} to: 0.0.0.0/0\n  log: error connect\n}}\n"
        f"socks pass {{\n  from: {clients} to: 0.0.0.0/0\n  command: connect\n  log: error connect\n}}\n"
    )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (danted cannot bind port 0 and report it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Dante:
    """A running ``danted`` on 127.0.0.1:``port``, logging to ``log``."""

    port: int
    log: Path
    proc: "subprocess.Popen[bytes]"

    @property
    def url(self) -> str:
        return f"socks5h://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def require_dante() -> None:
    """Skip the calling test when danted cannot run, or fail under ``PARALLAX_REQUIRE_SOCKS=1`` (CI)."""
    import pytest

    reason = danted_unavailable_reason()
    if reason:
        if os.environ.get("PARALLAX_REQUIRE_SOCKS") == "1":
            pytest.fail(f"PARALLAX_REQUIRE_SOCKS=1 but danted cannot run: {reason}")
        pytest.skip(reason)


def _stop_group(proc: "subprocess.Popen[bytes]") -> None:
    """SIGTERM the process group started here (danted and its own children), then reap."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def running_dante(directory: Path) -> Iterator[Dante]:
    """A danted on loopback (clients 127.0.0.0/8), config and log in ``directory``; stopped on exit.
    Raises RuntimeError if it does not start within 10 s (three tries at a free port)."""
    log = directory / "danted.log"
    for _attempt in range(3):  # the port was free a moment ago; another process may take it first
        port = free_port()
        conf = dante_config(directory / "danted.conf", listen="127.0.0.1", port=port, external="127.0.0.1",
                            clients="127.0.0.0/8")
        with open(log, "ab") as err:
            proc = subprocess.Popen(["danted", "-f", str(conf), "-N", "1", "-p", str(directory / "danted.pid")],
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        else:
            _stop_group(proc)
            continue
        if proc.poll() is None:
            break
    else:
        raise RuntimeError(f"danted did not start: {log.read_text(errors='replace')[-2000:]}")
    try:
        yield Dante(port, log, proc)
    finally:
        _stop_group(proc)
