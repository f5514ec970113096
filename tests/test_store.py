"""The SQLite observation store on real files, and its durability under ``kill -9``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from notary.config import DB_FILE
from notary.core import ProbeResult, Target, VerifyKey, verify_answer
from notary.errors import StoreError
from notary.store import SQLiteStore
from tests.support.disk import small_disk
from tests.support.proc import stop, wait_healthy
from tests.support.tls import leaf_spki, make_ca, server_context, tls_target_in_thread

PARALLAX = [sys.executable, "-c", "from client.cli import run_main; run_main()"]
T0 = 1_700_000_000


@pytest.fixture(scope="module")
def ca():
    return make_ca()


@pytest.fixture(scope="module")
def certs(ca):
    return [ca.issue_cert("a.example", "127.0.0.1"), ca.issue_cert("a.example", "127.0.0.1")]


def chain_of(cert) -> tuple[bytes, ...]:
    return tuple(
        x509.load_pem_x509_certificate(pem.bytes()).public_bytes(Encoding.DER) for pem in cert.cert_chain_pems
    )


def ok(target: Target, ip: str, at: int, cert) -> ProbeResult:
    r = ProbeResult.success(target, ip, at, "TLSv1.3", chain_of(cert))
    assert r.status == "ok"
    return r


# -- the store API ---------------------------------------------------------------------------------

async def test_add_latest_key_history_and_reopen(tmp_path: Path, certs) -> None:
    a, b = certs
    path = tmp_path / "obs.sqlite3"
    t = Target.parse("a.example", 443)
    t_other_sni = Target.parse("a.example", 443, "b.example")
    store = await SQLiteStore.open(path)
    try:
        assert await store.latest(t, all_addresses=False) == []
        assert await store.key_history(Target.parse("a.example", 443)) == ()
        assert await store.count() == 0

        await store.add([ok(t, "192.0.2.1", T0, a)], all_addresses=False)
        await store.add([ok(t, "192.0.2.1", T0 + 10, a)], all_addresses=False)
        await store.add([ProbeResult.failure(t, "192.0.2.1", T0 + 15, "timeout", "connect timed out")], all_addresses=False)
        # An all-addresses round of two addresses, and a round with another SNI.
        two = [ok(t, "192.0.2.1", T0 + 20, b), ok(t, "2001:db8::1", T0 + 20, a)]
        await store.add(two, all_addresses=True)
        await store.add([ok(t_other_sni, "192.0.2.1", T0 + 30, b)], all_addresses=False)
        await store.add([], all_addresses=False)  # nothing to record
        assert await store.count() == 6

        latest = await store.latest(t, all_addresses=False)
        assert [(r.status, r.observed_at) for r in latest] == [("timeout", T0 + 15)]
        assert latest[0].detail == "connect timed out"
        latest_all = await store.latest(t, all_addresses=True)
        assert latest_all == two  # the whole round, in order, byte-for-byte the same results
        assert await store.latest(t_other_sni, all_addresses=False) == [ok(t_other_sni, "192.0.2.1", T0 + 30, b)]
        assert await store.latest(Target.parse("a.example", 8443), all_addresses=False) == []

        hist = await store.key_history(Target.parse("a.example", 443))
        # Newest sighting first; failures carry no key and do not appear; the round with
        # another SNI does not count for this target (history is per host, port and SNI).
        # Both were last seen at T0 + 20: ties are ordered by key hash.
        expected: list[dict[str, Any]] = [
            {"spki_sha256": leaf_spki(b), "first_seen": T0 + 20, "last_seen": T0 + 20},
            {"spki_sha256": leaf_spki(a), "first_seen": T0, "last_seen": T0 + 20},
        ]
        assert [h.to_json() for h in hist] == sorted(expected, key=lambda h: (-h["last_seen"], h["spki_sha256"]))
        assert [h.to_json() for h in await store.key_history(t_other_sni)] == [
            {"spki_sha256": leaf_spki(b), "first_seen": T0 + 30, "last_seen": T0 + 30},
        ]
        assert len(await store.key_history(Target.parse("a.example", 443), limit=1)) == 1
        assert await store.key_history(Target.parse("a.example", 444)) == ()
    finally:
        await store.close()

    reopened = await SQLiteStore.open(path)
    try:
        assert await reopened.count() == 6
        assert await reopened.latest(t, all_addresses=True) == two
        assert await reopened.key_history(Target.parse("a.example", 443)) == hist
        await reopened.add([ok(t, "192.0.2.1", T0 + 40, a)], all_addresses=False)
        assert (await reopened.key_history(Target.parse("a.example", 443)))[0].to_json() == {
            "spki_sha256": leaf_spki(a), "first_seen": T0, "last_seen": T0 + 40}
    finally:
        await reopened.close()
    await reopened.close()  # closing twice is harmless


async def test_wal_mode_and_full_sync(tmp_path: Path, certs) -> None:
    path = tmp_path / "obs.sqlite3"
    store = await SQLiteStore.open(path)
    try:
        await store.add([ok(Target.parse("a.example", 443), "192.0.2.1", T0, certs[0])], all_addresses=False)
        # per connection: look at the store's own, on its own thread
        assert (await store._run(lambda: store._fetch("PRAGMA synchronous", ()), "read"))[0][0] == 2  # FULL
        # WAL is a property of the file: another connection sees it, and the committed row.
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("SELECT count(*) FROM observations").fetchone()[0] == 1
        assert (tmp_path / "obs.sqlite3-wal").exists()
    finally:
        await store.close()


async def test_unusable_files_raise_store_error_and_leave_no_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with pytest.raises(StoreError):
        await SQLiteStore.open(tmp_path / "no-such-dir" / "obs.sqlite3")
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(StoreError, match="not a database"):
        await SQLiteStore.open(garbage)
    # A half-opened connection is closed: its (non-daemon) worker thread would keep
    # the process from ever exiting.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and set(threading.enumerate()) - before:
        await asyncio.sleep(0.02)
    assert not set(threading.enumerate()) - before
    assert garbage.read_bytes() == b"this is not a database, " * 100  # not "repaired" or truncated


# -- kill -9 ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*PARALLAX, "--log-level", "INFO", "serve", "--region", "test", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", "--init",
             "--allow-network", "127.0.0.0/8", "--allow-port", "any", "--rate", "1000", "--burst", "1000"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )


async def test_every_returned_observation_survives_kill_9(tmp_path: Path, certs) -> None:
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    db_path = data / DB_FILE
    cert = certs[0]
    with tls_target_in_thread(server_context(cert)) as target:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_serve(data, port, log)
        try:
            wait_healthy(base, proc, log)
            key = VerifyKey.from_b64((data / "notary.pub").read_text().strip())
            returned: list[Any] = []
            kill_after, killer = 15, None

            async def kill_soon() -> None:
                await asyncio.sleep(0.005)  # land inside the next request
                os.kill(proc.pid, signal.SIGKILL)

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
                for i in range(30):
                    if len(returned) == kill_after and killer is None:
                        killer = asyncio.create_task(kill_soon())
                    body: dict[str, Any] = {"targets": [{"host": "127.0.0.1", "port": target.port}],
                            "nonce": f"kill-test-nonce-{i:04d}", "max_age": 0}
                    try:
                        async with s.post(base + "/v1/observe", json=body) as r:
                            assert r.status == 200, await r.text()
                            doc = await r.json()
                    except (TimeoutError, aiohttp.ClientError):
                        assert killer is not None, "the notary failed before it was killed"
                        break
                    res = doc["results"][0]
                    [obs] = verify_answer(res["envelopes"], res["freshness"], key, nonce=body["nonce"])
                    assert obs.nonce == body["nonce"] and obs.source == "fresh" and obs.status == "ok"
                    returned.append(obs)
            assert killer is not None
            await killer
            assert proc.wait(10) == -signal.SIGKILL
        finally:
            stop(proc)

        assert kill_after <= len(returned) < 30
        # Straight from the file the dead process left behind (WAL and all).
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = db.execute(
                "SELECT observed_at, spki_sha256, status FROM observations WHERE host=? AND port=?",
                ("127.0.0.1", target.port),
            ).fetchall()
            # Every answer the client got is there; at most the one request in flight was added.
            assert len(returned) <= len(rows) <= len(returned) + 1
            for obs in returned:
                assert (obs.observed_at, obs.spki_sha256, "ok") in rows
            for obs in returned:
                # The chain is stored once, content-addressed, in ``chains`` (schema v2).
                chain = db.execute(
                    "SELECT c.chain FROM observations o JOIN chains c ON c.sha256 = o.chain_sha256"
                    " WHERE o.host=? AND o.port=? AND o.observed_at=?",
                    ("127.0.0.1", target.port, obs.observed_at),
                ).fetchone()[0]
                assert base64.b64encode(obs.chain[0]).decode() in json.loads(chain)
        count_before = len(rows)

        # Restart on the same data dir: the history is there and the notary serves again.
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_serve(data, port, log)
        try:
            wait_healthy(base, proc, log)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
                async with s.get(f"{base}/v1/observe/127.0.0.1/{target.port}?nonce=after-restart-nonce-1") as r:
                    assert r.status == 200
                    res = (await r.json())["results"][0]
                    [cached] = verify_answer(res["envelopes"], res["freshness"], key, nonce="after-restart-nonce-1")
                async with s.get(f"{base}/v1/observe/127.0.0.1/{target.port}?nonce=after-restart-nonce-2&max_age=0") as r:
                    assert r.status == 200
                    res = (await r.json())["results"][0]
                    [fresh] = verify_answer(res["envelopes"], res["freshness"], key, nonce="after-restart-nonce-2")
        finally:
            stop(proc)
        assert proc.returncode is not None
    assert cached.source == "cached"
    assert cached.observed_at in {row[0] for row in rows}
    assert fresh.source == "fresh" and fresh.spki_sha256 == leaf_spki(cert)
    assert [h.spki_sha256 for h in fresh.key_history] == [leaf_spki(cert)]
    assert fresh.key_history[0].first_seen == min(o.observed_at for o in returned)
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("SELECT count(*) FROM observations").fetchone()[0] == count_before + 1
    text = log.read_text()
    assert "Traceback" not in text


async def test_concurrent_adds_are_group_committed_without_loss(tmp_path: Path, certs) -> None:
    """Many concurrent writers: every round lands, none interleaves with another (was a bug with aiosqlite)."""
    store = await SQLiteStore.open(tmp_path / "obs.sqlite3")
    try:
        targets = [Target.parse(f"h{i}.example", 443) for i in range(200)]
        await asyncio.gather(*(
            store.add([ok(t, "192.0.2.1", T0 + i, certs[0]), ok(t, "192.0.2.2", T0 + i, certs[1])], all_addresses=True)
            for i, t in enumerate(targets)
        ))
        assert await store.count() == 400
        for i, t in enumerate(targets[:20]):
            latest = await store.latest(t, all_addresses=True)
            assert [r.ip for r in latest] == ["192.0.2.1", "192.0.2.2"]
            assert all(r.observed_at == T0 + i for r in latest)
    finally:
        await store.close()


async def test_closed_store_raises_store_error(tmp_path: Path, certs) -> None:
    store = await SQLiteStore.open(tmp_path / "obs.sqlite3")
    await store.close()
    with pytest.raises(StoreError):
        await store.latest(Target.parse("a.example", 443), all_addresses=False)


async def test_a_full_disk_fails_a_commit_by_name_and_the_store_goes_on_once_space_is_back(tmp_path: Path, certs) -> None:
    """A real full disk (a 1 MiB tmpfs filled up): the commit fails with SQLite's own reason, nothing
    of it is kept, and the same store commits again once space is freed."""
    with small_disk(tmp_path, 1024) as disk:
        store = await SQLiteStore.open(disk / "obs.sqlite3")
        try:
            t = Target.parse("a.example", 443)
            await store.add([ok(t, "192.0.2.1", T0, certs[0])], all_addresses=False)
            filler = disk / "filler"
            with open(filler, "wb", buffering=0) as f:  # every byte left: the next log frame has no room
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 4096)
            many = [ok(Target.parse(f"h{i}.example", 443), "192.0.2.1", T0 + 1, certs[i % 2]) for i in range(64)]
            # SQLite's reason, said once (not "no transaction is active", the failed ROLLBACK's)
            with pytest.raises(StoreError, match=r"^cannot record observations: database or disk is full$"):
                await asyncio.gather(*(store.add([r], all_addresses=False) for r in many))
            assert await store.count() == 1
            filler.unlink()
            await store.add([ok(t, "192.0.2.1", T0 + 2, certs[1])], all_addresses=False)
            assert await store.count() == 2
            assert [r.observed_at for r in await store.latest(t, all_addresses=False)] == [T0 + 2]
        finally:
            await store.close()
