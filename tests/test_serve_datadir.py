"""``parallax serve`` and its data directory (issue 8, item 8): nothing is written before
the listener is bound, one serve per data dir (a lock), and no silent ``unknown`` region."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from tests.support.proc import stop, wait_healthy
import pytest

from tests.test_cli_notary import PARALLAX, assert_one_line_error, free_port, run


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    d = tmp_path / "notary"
    p = run("keygen", "--data-dir", str(d))
    assert p.returncode == 0, p.stderr
    return d, json.loads(p.stdout)


def test_a_serve_that_cannot_bind_leaves_identity_json_alone(keyed: tuple[Path, dict[str, Any]]) -> None:
    d, _ = keyed
    port = free_port()
    with open(d / "log", "wb") as out:
        first = subprocess.Popen([*PARALLAX, "serve", "--data-dir", str(d), "--listen", f"127.0.0.1:{port}",
                                  "--name", "good", "--region", "eu-west"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", first, d / "log")
        stop(first)  # release the lock; the identity it wrote stays
        before = (d / "identity.json").read_bytes()
        assert json.loads(before)["name"] == "good"
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            p = run("serve", "--data-dir", str(d), "--listen", f"127.0.0.1:{taken}", "--name", "impostor",
                    "--region", "nowhere", "--url", "http://wrong.invalid")
            assert_one_line_error(p, 74)
        assert (d / "identity.json").read_bytes() == before
    finally:
        stop(first)


def test_two_serves_on_one_data_dir_refuse_with_a_clear_message(keyed: tuple[Path, dict[str, Any]]) -> None:
    d, _ = keyed
    port = free_port()
    with open(d / "log", "wb") as out:
        first = subprocess.Popen([*PARALLAX, "serve", "--data-dir", str(d), "--listen", f"127.0.0.1:{port}",
                                  "--region", "eu-west"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", first, d / "log")
        before = (d / "identity.json").read_bytes()
        p = run("serve", "--data-dir", str(d), "--listen", f"127.0.0.1:{free_port()}", "--region", "us-east",
                "--name", "second")
        line = assert_one_line_error(p, 78)
        assert "in use by another process" in line and f"pid {first.pid}" in line
        assert (d / "identity.json").read_bytes() == before
    finally:
        stop(first)
    # Once the first one is gone, the data dir is free again (no stale lock after any exit).
    second_port = free_port()
    with open(d / "log2", "wb") as out:
        again = subprocess.Popen([*PARALLAX, "serve", "--data-dir", str(d), "--listen", f"127.0.0.1:{second_port}",
                                  "--region", "us-east"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{second_port}", again, d / "log2")
    finally:
        stop(again)


def test_serve_requires_a_region(keyed: tuple[Path, dict[str, Any]]) -> None:
    d, _ = keyed
    line = assert_one_line_error(run("serve", "--data-dir", str(d), "--listen", f"127.0.0.1:{free_port()}"), 64)
    assert "--region" in line
    for empty in ("", "  "):  # an unset $PARALLAX_REGION in a container
        line = assert_one_line_error(run("serve", "--data-dir", str(d), "--region", empty,
                                         "--listen", f"127.0.0.1:{free_port()}"), 64)
        assert "--region" in line
    assert not (d / "identity.json").exists()
