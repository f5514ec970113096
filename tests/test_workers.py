"""``parallax serve --workers N``: SO_REUSEPORT workers over one SQLite store (real processes, real sockets)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from notary.core import Target, VerifyKey, verify_answer
from notary.store import SQLiteStore
from tests.support.proc import stop, wait_healthy
from tests.support.tls import make_ca, server_context, tls_target_in_thread

PARALLAX = [sys.executable, "-m", "client.cli"]
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    # A new connection each time: SO_REUSEPORT balances connections, not requests.
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a dead parent's reaper) counts as gone.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


_WRITER = """
import asyncio, sys
sys.path.insert(0, {root!r})
from notary.core import ProbeResult, Target
from notary.store import SQLiteStore

async def main():
    store = await SQLiteStore.open({db!r})
    tag = {tag!r}
    async def one(i):
        t = Target(f"{{tag}}-{{i}}.example", 443, f"{{tag}}-{{i}}.example")
        await store.add([ProbeResult.failure(t, "192.0.2.1", 1000 + i, "timeout", "t")], all_addresses=False)
    # Many concurrent adds (group commit inside this process), racing the other process.
    await asyncio.gather(*(one(i) for i in range({n})))
    await store.close()
    print("done")

asyncio.run(main())
"""


async def test_two_processes_write_one_store_concurrently(tmp_path: Path) -> None:
    """Each worker keeps its writer thread; across processes SQLite's lock (busy_timeout) serialises them."""
    db = tmp_path / "observations.db"
    n = 300
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER.format(root=str(ROOT), db=str(db), tag=tag, n=n)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "done", err
    store = await SQLiteStore.open(db)
    try:
        assert await store.count() == 2 * n
        for tag in ("a", "b"):
            got = await store.latest(Target(f"{tag}-7.example", 443, f"{tag}-7.example"), all_addresses=False)
            assert [r.observed_at for r in got] == [1007]
    finally:
        await store.close()


def test_serve_with_two_workers_shares_the_port_and_the_store(tmp_path: Path) -> None:
    ctx = server_context(make_ca().issue_cert("localhost"))
    data = tmp_path / "notary"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with tls_target_in_thread(ctx) as site, open(log, "ab") as out:
        proc = subprocess.Popen(
            [*PARALLAX, "serve", "--region", "test", "--data-dir", str(data), "--init", "--listen", f"127.0.0.1:{port}",
             "--allow-network", "127.0.0.0/8", "--allow-port", "any", "--workers", "2"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(ROOT),
        )
        try:
            wait_healthy(base, proc, log)
            workers = {_get(base + "/healthz")["worker"] for _ in range(60)}
            assert workers == {0, 1}, workers
            kids = _children(proc.pid)
            assert len(kids) == 2
            key = VerifyKey.from_b64((data / "notary.pub").read_text().strip())
            # A fresh probe lands in one worker; cached answers from either worker name it,
            # because both read the same store (a worker without the round in memory reads it there).
            observed = set()
            for i in range(12):
                nonce = f"worker-test-nonce-{i:04d}"
                doc = _get(f"{base}/v1/observe/127.0.0.1/{site.port}?nonce={nonce}")
                res = doc["results"][0]
                [obs] = verify_answer(res["envelopes"], res["freshness"], key, nonce=nonce)
                assert obs.status == "ok"
                observed.add(obs.observed_at)
            assert len(observed) <= 2  # at most one probe per worker before both serve it from cache/store
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(15) == 0, log.read_text()
            finally:
                stop(proc)
        deadline = time.monotonic() + 10
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(k) for k in kids), "a worker outlived the parent"


def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*PARALLAX, "serve", "--region", "test", "--data-dir", str(tmp_path / "n"), "--init", "--listen", f"127.0.0.1:{port}",
             "--workers", "2"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(ROOT),
        )
    try:
        wait_healthy(base, proc, log)
        kids = _children(proc.pid)
        assert len(kids) == 2
        proc.kill()  # SIGKILL: no handler runs in the parent
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(k) for k in kids), "an orphaned worker kept serving"
    finally:
        stop(proc)


@pytest.mark.parametrize("value", ["0", "65", "two", "-1", "1.5", "²"])
def test_bad_worker_counts_are_usage_errors(tmp_path: Path, value: str) -> None:
    p = subprocess.run([*PARALLAX, "serve", "--region", "test", "--data-dir", str(tmp_path), "--workers", value],
                       capture_output=True, text=True, timeout=30, cwd=str(ROOT))
    assert p.returncode == 64, p.stderr
    assert p.stderr.count("\n") == 1 and "--workers" in p.stderr and "Traceback" not in p.stderr


def test_a_taken_port_is_an_io_error_not_a_crash(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([*PARALLAX, "serve", "--region", "test", "--data-dir", str(tmp_path / "n"), "--init",
                            "--listen", f"127.0.0.1:{port}", "--workers", "2"],
                           capture_output=True, text=True, timeout=30, cwd=str(ROOT))
    assert p.returncode == 74, p.stderr  # as for a single notary (test_cli_notary)
    assert "Traceback" not in p.stderr and "already in use" in p.stderr.lower()
    assert p.stderr.count("\n") == 1


def test_serve_says_listening_only_once_every_worker_accepts_connections(tmp_path: Path) -> None:
    """Issue 11: ``listening`` was printed before the workers had their sockets; a client that
    connected at once could be refused.  Now every worker reports in first."""
    data = tmp_path / "d"
    for _ in range(3):  # the race was a matter of milliseconds: try it a few times
        proc = subprocess.Popen(
            [sys.executable, "-c", "from client.cli import run_main; run_main()", "serve", "--init", "--region", "test",
             "--data-dir", str(data), "--listen", "127.0.0.1:0", "--workers", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            port = int(json.loads(proc.stdout.readline())["listening"].rpartition(":")[2])
            for _ in range(20):  # no waiting: each connection must be accepted right away
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    pass
        finally:
            stop(proc)


def test_a_healthy_worker_implies_the_entry_and_identity_exist(tmp_path: Path) -> None:
    """Compose's bundle service and the benchmarks wait for /healthz, then read the exported
    entry.  Saying ``listening`` only once every worker was ready had moved the entry's writing
    after the first worker's answers (a benchmark read a missing entry.json); the files are
    written again as soon as the address is held, before any worker starts."""
    for attempt in range(3):
        data, export = tmp_path / f"d{attempt}", tmp_path / f"out{attempt}" / "entry.json"
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", "from client.cli import run_main; run_main()", "serve", "--init", "--region", "test",
             "--data-dir", str(data), "--listen", f"127.0.0.1:{port}", "--workers", "2", "--export-entry", str(export)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.002)
            else:
                pytest.fail("no worker answered /healthz within 30 s")
            assert export.exists() and (data / "identity.json").exists(), "healthy before the entry was written"
            assert json.loads(export.read_text())["region"] == "test"
        finally:
            stop(proc)
