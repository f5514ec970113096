"""Schema versions 3 and 4 (issue 11), and migrations to them from real older files.

Version 3 dropped two indexes no query used.  Version 4 keeps the key history
as a table (``sightings``, :mod:`notary.sightings`) with an index on each key's
``ok`` sightings, so no statement the store runs scans a target's rounds.

``tests/data/store_v2.sqlite3`` is a real version-2 store, written by the
schema-v2 notary (commit 214a5fb: ``SQLiteStore.open`` then ``add`` of three
rounds of ``v2.example:443``: one key at T0, a two-address round at T0+60 with
a second key, a timeout at T0+120).  ``tests/data/store_v3.sqlite3`` is a real
version-3 store, written by the schema-v3 notary (commit 636a3cd): rounds of
``v3.example:443`` with key A at T0, a two-address round at T0+60 with keys A and
B, key C for SNI ``other.example`` at T0+90, a timeout at T0+120, key B at T0+180.
Real SQLite files throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from notary.core import ProbeResult, Target
from notary.errors import StoreError
from notary.migrations import SCHEMA_VERSION
from notary.retention import RetentionLimits
from notary.store import SQLiteStore
from tests.support.disk import small_disk

ROOT = Path(__file__).resolve().parent.parent
V2_FILE = Path(__file__).parent / "data" / "store_v2.sqlite3"
V3_FILE = Path(__file__).parent / "data" / "store_v3.sqlite3"
T0 = 1_700_000_000
DROPPED = {"observations_hpi", "observations_keys"}
V3_INDEXES = {"rounds_target", "rounds_age", "observations_round", "observations_chain"}
KEPT = V3_INDEXES | {"observations_sighting", "sightings_recent"}


def _indexes(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}


def _version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def _v2_copy(tmp_path: Path) -> Path:
    path = tmp_path / "observations.sqlite3"
    shutil.copyfile(V2_FILE, path)
    assert _version(path) == 2 and _indexes(path) == DROPPED | V3_INDEXES  # the fixture is what v2 wrote
    return path


def _v3_copy(tmp_path: Path, name: str = "observations.sqlite3") -> Path:
    path = tmp_path / name
    shutil.copyfile(V3_FILE, path)
    assert _version(path) == 3 and _indexes(path) == V3_INDEXES  # the fixture is what v3 wrote
    return path


async def test_a_new_store_is_version_4_without_the_unused_indexes(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "db")
    await store.close()
    assert SCHEMA_VERSION == 4
    assert _version(tmp_path / "db") == 4
    assert _indexes(tmp_path / "db") == KEPT


async def test_a_real_v2_store_is_migrated_to_v4_and_keeps_its_observations(tmp_path: Path) -> None:
    path = _v2_copy(tmp_path)
    t = Target.parse("v2.example", 443)
    store = await SQLiteStore.open(path)
    try:
        latest = await store.latest(t, all_addresses=False)
        both = await store.latest(t, all_addresses=True)
        history = await store.key_history(t)
        assert await store.count() == 4
        after = await store.add([ProbeResult.failure(t, "192.0.2.1", T0 + 180, "refused", "connection refused")],
                                all_addresses=False)
    finally:
        await store.close()
    assert _version(path) == 4
    assert _indexes(path) == KEPT
    assert [(r.status, r.observed_at) for r in latest] == [("timeout", T0 + 120)]
    assert [(r.ip, r.status, r.observed_at) for r in both] == [("192.0.2.1", "ok", T0 + 60), ("192.0.2.2", "ok", T0 + 60)]
    # The chains come back whole from ``chains``: each one certificate (the fixture's leaf), and
    # the two addresses presented different keys.
    assert [len(r.chain) for r in both] == [1, 1] and both[0].chain != both[1].chain
    assert {r.spki_sha256 for r in both} == {h.spki_sha256 for h in history}
    # Two keys: the first seen at T0 and again at T0+60 (second address), the second at T0+60 only.
    assert sorted((h.first_seen, h.last_seen) for h in history) == [(T0, T0 + 60), (T0 + 60, T0 + 60)]
    assert after == history  # a failure shows no key


async def test_a_real_v3_store_is_migrated_to_v4_with_the_same_key_history(tmp_path: Path) -> None:
    path = _v3_copy(tmp_path)
    t, other = Target.parse("v3.example", 443), Target.parse("v3.example", 443, "other.example")
    with contextlib.closing(sqlite3.connect(path)) as db:  # what the v3 notary's query answers (protocol.md 6.4)
        before = {
            sni: [tuple(r) for r in db.execute(
                "SELECT o.spki_sha256, min(o.observed_at), max(o.observed_at) FROM observations o"
                " JOIN rounds r ON r.id = o.round_id WHERE r.host='v3.example' AND r.port=443 AND r.sni=?"
                " AND o.status='ok' GROUP BY o.spki_sha256 ORDER BY max(o.observed_at) DESC, o.spki_sha256", (sni,))]
            for sni in (t.sni or "", "other.example")}
    store = await SQLiteStore.open(path)
    try:
        history, other_history = await store.key_history(t), await store.key_history(other)
        count = await store.count()
    finally:
        await store.close()
    assert _version(path) == 4 and _indexes(path) == KEPT and count == 6
    assert [(h.spki_sha256, h.first_seen, h.last_seen) for h in history] == before[t.sni or ""]
    assert [(h.spki_sha256, h.first_seen, h.last_seen) for h in other_history] == before["other.example"]
    # Two keys for the default SNI (B newest), one for other.example: the fixture as described above.
    assert [(h.first_seen, h.last_seen) for h in history] == [(T0 + 60, T0 + 180), (T0, T0 + 60)]
    assert [(h.first_seen, h.last_seen) for h in other_history] == [(T0 + 90, T0 + 90)]
    with contextlib.closing(sqlite3.connect(path)) as db:  # each ok observation names its target's key's sighting
        named = db.execute(
            "SELECT o.status, s.host = r.host AND s.port = r.port AND s.sni = r.sni AND s.spki_sha256 = o.spki_sha256"
            " FROM observations o JOIN rounds r ON r.id = o.round_id LEFT JOIN sightings s ON s.id = o.sighting_id"
            " ORDER BY o.id").fetchall()
    assert named == [("ok", 1)] * 4 + [("timeout", None), ("ok", 1)]  # the fixture's rounds, in order


async def test_a_migration_is_refused_when_the_disk_cannot_hold_its_log(tmp_path: Path) -> None:
    # 96 KiB: the 40 KiB v3 store, SQLite's 32 KiB shared-memory file, and 24 KiB free: less than the store.
    with small_disk(tmp_path, 96) as disk:
        path = _v3_copy(disk)
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(StoreError, match=r"from schema 3 to 4 needs 1\.0 MiB of free disk \(its size and 1 MiB\).*; 0\.0 MiB is free"):
            await SQLiteStore.open(path)
        assert _version(path) == 3 and _indexes(path) == V3_INDEXES
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # nothing was written
    # The control: with room for it, the same store migrates on the same kind of disk.
    with small_disk(tmp_path, 2048) as disk:
        path = _v3_copy(disk)
        store = await SQLiteStore.open(path)
        try:
            assert await store.count() == 6
        finally:
            await store.close()
        assert _version(path) == 4


async def test_a_disk_that_fills_during_a_migration_is_named_and_the_store_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The disk fills after the free-space check (another process wrote meanwhile): stood in for by
    # skipping the check on a disk too small.  SQLite then ends the transaction itself; the error
    # must still name the full disk (a second ROLLBACK used to replace it with "no transaction").
    monkeypatch.setattr("notary.migrations._check_space", lambda db, found: None)
    with small_disk(tmp_path, 96) as disk:
        path = _v3_copy(disk)
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(StoreError, match="disk is full"):
            await SQLiteStore.open(path)
        assert _version(path) == 3 and hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_the_documented_rollback_to_v3_gives_the_v3_schema(tmp_path: Path) -> None:
    """deploy/README.md's recipe, run with the sqlite3 module: the tables and indexes are then exactly v3's."""
    path = _v3_copy(tmp_path, "migrated.sqlite3")
    asyncio.run(_open_close(path))
    assert _version(path) == 4
    recipe = re.search(r"sqlite3 DATA/observations.sqlite3 '(DROP INDEX observations_sighting;[^']+)'",
                       " ".join((ROOT / "deploy" / "README.md").read_text().split()))
    assert recipe, "deploy/README.md gives the rollback from schema 4"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(recipe.group(1))
    assert _version(path) == 3
    assert _schema(path) == _schema(V3_FILE)


async def _open_close(path: Path) -> None:
    store = await SQLiteStore.open(path)
    await store.close()


def _schema(path: Path) -> set[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {(r[0], " ".join(r[1].split())) for r in db.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")}


async def test_no_statement_the_store_runs_uses_a_dropped_index_or_scans_a_history(tmp_path: Path) -> None:
    """Every statement the store executes (writes, reads, key history, retention), traced as run, is
    planned on a v4 file with the two dropped indexes put back: none uses them, and the key-history
    statements are index searches (no scan of a target's rounds)."""
    path = _v2_copy(tmp_path)
    plan_db = tmp_path / "plan.sqlite3"
    shutil.copyfile(V2_FILE, plan_db)
    await _open_close(plan_db)  # v4 now
    with contextlib.closing(sqlite3.connect(plan_db)) as db:  # version 1's definitions of the two
        db.execute("CREATE INDEX observations_hpi ON observations (host, port, ip, observed_at)")
        db.execute("CREATE INDEX observations_keys ON observations (host, port, spki_sha256)")
    statements: list[str] = []
    store = await SQLiteStore.open(path)
    try:
        await store._run(lambda: store._db.set_trace_callback(statements.append), "trace")  # noqa: SLF001
        t = Target.parse("v2.example", 443)
        rounds = await store.latest(t, all_addresses=True)
        await store.add(rounds, all_addresses=True)
        await store.add([ProbeResult.failure(t, "192.0.2.1", T0 + 200, "timeout", "x")], all_addresses=False)
        await store.latest(t, all_addresses=False)
        await store.key_history(t)
        await store.count()
        await store.enforce_retention(RetentionLimits(max_age_days=1, max_bytes=1), T0 + 3 * 86400)
        await store.live_bytes()
    finally:
        await store.close()
    planned = [s for s in statements if s.split()[0].upper() in ("SELECT", "INSERT", "DELETE", "UPDATE")]
    history = [s for s in planned if "FROM sightings" in s or "min(observed_at)" in s or "max(observed_at)" in s]
    assert any(s.startswith("INSERT INTO observations") for s in planned)
    assert any(s.startswith("INSERT INTO sightings") for s in planned)
    assert any(s.startswith("DELETE FROM observations") for s in planned)
    assert any("FROM sightings" in s for s in history)  # the read
    assert any("min(observed_at)" in s for s in history)  # retention's recount
    assert not any("GROUP BY" in s for s in planned)  # the old scan is gone
    with contextlib.closing(sqlite3.connect(plan_db)) as db:
        assert _indexes(plan_db) == KEPT | DROPPED
        for sql in planned:
            plan = " ".join(str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + sql))
            assert not any(name in plan for name in DROPPED), (sql, plan)
            if sql in history:
                assert "SCAN" not in plan and "SEARCH" in plan, (sql, plan)
