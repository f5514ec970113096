"""A real SOCKS5 server for tests: Debian's Dante (``danted``, package ``dante-server``).

Used on loopback (tests/test_socks_loopback.py) and inside a lab namespace
(tests/lab/test_lab_socks.py).  The configuration allows CONNECT only, without
authentication (a client's offer of username/password, as Parallax sends for
Tor stream isolation, is answered with "no authentication"), from ``clients``
to anywhere, leaving from ``external``.  Dante logs to stderr.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

__all__ = ["danted_unavailable_reason", "dante_config", "free_port"]


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
