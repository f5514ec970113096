"""Schema version 3 (issue 11): the two indexes no query used are gone, and a v2 store migrates.

``tests/data/store_v2.sqlite3`` is a real version-2 store, written by the
schema-v2 notary (commit 214a5fb: ``SQLiteStore.open`` then ``add`` of three
rounds of ``v2.example:443``: one key at T0, a two-address round at T0+60 with
a second key, a timeout at T0+120).  Real SQLite files throughout.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

from notary.core import ProbeResult, Target
from notary.migrations import SCHEMA_VERSION
from notary.retention import RetentionLimits
from notary.store import SQLiteStore

V2_FILE = Path(__file__).parent / "data" / "store_v2.sqlite3"
T0 = 1_700_000_000
DROPPED = {"observations_hpi", "observations_keys"}
KEPT = {"rounds_target", "rounds_age", "observations_round", "observations_chain"}


def _indexes(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}


def _version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def _v2_copy(tmp_path: Path) -> Path:
    path = tmp_path / "observations.sqlite3"
    shutil.copyfile(V2_FILE, path)
    assert _version(path) == 2 and _indexes(path) == DROPPED | KEPT  # the fixture is what v2 wrote
    return path


async def test_a_new_store_is_version_3_without_the_unused_indexes(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "db")
    await store.close()
    assert SCHEMA_VERSION == 3
    assert _version(tmp_path / "db") == 3
    assert _indexes(tmp_path / "db") == KEPT


async def test_a_real_v2_store_is_migrated_to_v3_and_keeps_its_observations(tmp_path: Path) -> None:
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
    assert _version(path) == 3
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


async def test_no_statement_the_store_runs_would_use_the_dropped_indexes(tmp_path: Path) -> None:
    """Every statement the store executes (writes, reads, key history, retention), traced as run,
    is planned on the v2 file, where both indexes still exist: none uses them."""
    path = _v2_copy(tmp_path)
    plan_db = tmp_path / "plan.sqlite3"
    shutil.copyfile(V2_FILE, plan_db)  # still v2, both indexes present
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
    assert any("spki_sha256" in s and "GROUP BY" in s for s in planned)  # the key history query was traced
    assert any(s.startswith("INSERT INTO observations") for s in planned)
    assert any(s.startswith("DELETE FROM observations") for s in planned)
    with contextlib.closing(sqlite3.connect(plan_db)) as db:
        assert _indexes(plan_db) >= DROPPED
        for sql in planned:
            plan = " ".join(str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + sql))
            assert not any(name in plan for name in DROPPED), (sql, plan)
