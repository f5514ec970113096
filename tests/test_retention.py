"""The bounded store (issue 8, item 3): chains stored once, schema v1 -> v2 migration,
retention by age and by size, and ``parallax store info|compact``.  Real SQLite files."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from notary.core import ProbeResult, Target
from notary.errors import StoreError
from notary.migrations import SCHEMA_V1, SCHEMA_VERSION
from notary.retention import RetentionLimits, compact, store_info
from notary.store import SQLiteStore
from tests.support.tls import make_ca

T0 = 1_700_000_000
PARALLAX = [sys.executable, "-c", "from client.cli import run_main; run_main()"]


def _chain() -> tuple[bytes, ...]:
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography import x509

    ca = make_ca()
    leaf = ca.issue_cert("big.example", *(f"n{i}.big.example" for i in range(300)))  # a big leaf (~10 KB)
    return tuple(x509.load_pem_x509_certificate(b.bytes()).public_bytes(Encoding.DER)
                 for b in leaf.cert_chain_pems)


CHAIN = _chain()


def _ok(sni: str, at: int, chain: tuple[bytes, ...] = CHAIN) -> ProbeResult:
    return ProbeResult.success(Target("big.example", 443, sni), "192.0.2.1", at, "TLSv1.3", chain)


async def test_each_distinct_chain_is_stored_once(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "db")
    try:
        for i in range(200):  # distinct SNIs of one server: the attack that grew the store by 17.5 MB in 10 s
            await store.add([_ok(f"s{i}.big.example", T0 + i)], all_addresses=False)
        again = await store.latest(Target("big.example", 443, "s7.big.example"), all_addresses=False)
    finally:
        await store.close()
    assert again == [_ok("s7.big.example", T0 + 7)]  # the chain comes back whole
    info = store_info(tmp_path / "db")
    assert info["chains"] == 1 and info["observations"] == 200
    assert info["live_bytes"] < 200 * sum(map(len, CHAIN)) // 4


def _v1_database(path: Path) -> None:
    """A database exactly as the first release wrote it: schema v1, whole records, refusals stored."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SCHEMA_V1)
    rows = [
        ([_ok("a.big.example", T0)], 0),
        ([_ok("b.big.example", T0 + 1)], 0),
        ([ProbeResult.failure(Target("big.example", 443, "c.big.example"), "192.0.2.1", T0 + 2, "timeout", "slow")], 0),
        ([ProbeResult.failure(Target("127.0.0.1", 443, None), "127.0.0.1", T0 + 3, "blocked_by_policy", "loopback")], 0),
    ]
    for results, all_addresses in rows:
        t = results[0].target
        rid = db.execute("INSERT INTO rounds (host, port, sni, all_addresses, observed_at) VALUES (?,?,?,?,?)",
                         (t.host, t.port, t.sni or "", all_addresses, results[0].observed_at)).lastrowid
        for r in results:
            db.execute("INSERT INTO observations (round_id, host, port, ip, status, spki_sha256, observed_at, record)"
                       " VALUES (?,?,?,?,?,?,?,?)",
                       (rid, t.host, t.port, r.ip, r.status, r.spki_sha256, r.observed_at, r.to_record()))
    db.close()


async def test_a_v1_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "observations.sqlite3"
    _v1_database(path)
    store = await SQLiteStore.open(path)
    try:
        a = await store.latest(Target("big.example", 443, "a.big.example"), all_addresses=False)
        c = await store.latest(Target("big.example", 443, "c.big.example"), all_addresses=False)
        refused = await store.latest(Target("127.0.0.1", 443, None), all_addresses=False)
        history = await store.key_history(Target("big.example", 443, "b.big.example"))
        await store.add([_ok("d.big.example", T0 + 9)], all_addresses=False)
    finally:
        await store.close()
    assert a == [_ok("a.big.example", T0)]
    assert [r.status for r in c] == ["timeout"]
    assert refused == []  # policy refusals are not kept
    assert [h.first_seen for h in history] == [T0 + 1]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert db.execute("SELECT count(*) FROM chains").fetchone()[0] == 1
        # No observation row carries a chain of its own any more.
        for (record,) in db.execute("SELECT record FROM observations"):
            assert json.loads(record)["chain"] == []


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer"):
        await SQLiteStore.open(path)


async def test_retention_by_age_and_by_size(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = await SQLiteStore.open(path)
    try:
        day = 86400
        for i in range(10):  # ten old rounds, ten recent ones, each with its own chain
            chain = _chain()
            await store.add([_ok(f"old{i}.big.example", T0 + i, chain)], all_addresses=False)
        for i in range(10):
            await store.add([_ok(f"new{i}.big.example", T0 + 40 * day + i, _chain())], all_addresses=False)
        now = T0 + 40 * day + 100
        by_age = await store.enforce_retention(RetentionLimits(max_age_days=30, max_bytes=1 << 40), now)
        assert by_age["rounds_by_age"] == 10 and by_age["chains"] == 10
        assert await store.latest(Target("big.example", 443, "old3.big.example"), all_addresses=False) == []
        info = store_info(path)
        assert info["rounds"] == 10 and info["chains"] == 10
        cap = info["live_bytes"] // 2
        by_size = await store.enforce_retention(RetentionLimits(max_age_days=30, max_bytes=cap), now)
        assert by_size["rounds_by_size"] >= 1
        assert store_info(path)["live_bytes"] <= cap
        # The newest round survives; the oldest went first.
        assert await store.latest(Target("big.example", 443, "new9.big.example"), all_addresses=False)
        assert await store.latest(Target("big.example", 443, "new0.big.example"), all_addresses=False) == []
    finally:
        await store.close()


def test_store_info_and_compact_commands(tmp_path: Path) -> None:
    data = tmp_path / "notary"
    data.mkdir()
    path = data / "observations.sqlite3"
    _v1_database(path)
    info = subprocess.run([*PARALLAX, "store", "info", "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert doc["schema_version"] == 1 and doc["observations"] == 4 and doc["chains"] is None  # info only reads
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0  # untouched
    out = subprocess.run([*PARALLAX, "store", "compact", "--data-dir", str(data), "--max-age-days", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert done["deleted"]["rounds_by_age"] == 3  # everything is from 2023 (the refusal went in the migration)
    assert done["file_bytes_after"] <= done["file_bytes_before"]
    after = json.loads(subprocess.run([*PARALLAX, "store", "info", "--data-dir", str(data)], capture_output=True,
                                      text=True, timeout=60).stdout)
    assert after["schema_version"] == 4 and after["chains"] == 0
    assert json.loads(subprocess.run([*PARALLAX, "store", "info", "--data-dir", str(data)], capture_output=True,
                                     text=True, timeout=60).stdout)["rounds"] == 0
    missing = subprocess.run([*PARALLAX, "store", "info", "--data-dir", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 66 and len(missing.stderr.strip().splitlines()) == 1


def test_compact_refuses_while_a_notary_serves_the_data_dir(tmp_path: Path) -> None:
    from notary.datadir import DataDirLock

    data = tmp_path / "notary"
    data.mkdir()
    _v1_database(data / "observations.sqlite3")
    with DataDirLock(data):
        out = subprocess.run([*PARALLAX, "store", "compact", "--data-dir", str(data)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 78 and "in use by another process" in out.stderr
    assert compact(data / "observations.sqlite3", RetentionLimits(), T0)["deleted"]["rounds_by_age"] == 0


@pytest.mark.parametrize("size_check", [0.05, 0.0])
async def test_a_serving_notary_enforces_the_size_bound_between_passes(
        tmp_path: Path, size_check: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's suspicion: size retention ran only every 300 s, so a flood of distinct chains
    could overshoot the bound for five minutes.  The live size is now checked every
    ``size_check`` seconds and a pass runs at once when it is over (0: the old behaviour, the control).
    The flood starts once the pass a notary runs when it starts has ended (a pass lets commits run
    between its transactions, so that pass would otherwise catch the flood too)."""
    import asyncio
    import time

    from aiohttp import web

    from notary.config import NotaryConfig
    from notary.core import SigningKey
    from notary.server import STORE, create_app
    from notary.store import SQLiteStore

    passes = asyncio.Event()
    enforce = SQLiteStore.enforce_retention

    async def counted(self: SQLiteStore, limits: RetentionLimits, now: int) -> dict[str, int]:
        try:
            return await enforce(self, limits, now)
        finally:
            passes.set()

    monkeypatch.setattr(SQLiteStore, "enforce_retention", counted)

    # Eight: enough to overshoot the cap below with schema v3's smaller file (two fewer indexes).
    chains = [_chain() for _ in range(8)]
    cap = 3 * sum(map(len, CHAIN)) + 64 * 1024  # room for about three distinct chains
    limits = RetentionLimits(max_bytes=cap, interval=300.0, size_check=size_check)
    app = create_app(NotaryConfig(data_dir=tmp_path, retention=limits), SigningKey.generate(), clock=lambda: T0 + 10)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        store = app[STORE]
        await asyncio.wait_for(passes.wait(), 10)
        passes.clear()
        for i, chain in enumerate(chains):
            await store.add([_ok(f"flood{i}.big.example", T0 + i, chain)], all_addresses=False)
        assert await store.live_bytes() > cap
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and await store.live_bytes() > cap:
            await asyncio.sleep(0.05)
        if size_check:
            assert await store.live_bytes() <= cap
            assert await store.latest(Target("big.example", 443, "flood5.big.example"), all_addresses=False)
            assert await store.latest(Target("big.example", 443, "flood0.big.example"), all_addresses=False) == []
        else:
            assert await store.live_bytes() > cap  # only the 300 s pass would have caught it
    finally:
        await runner.cleanup()
