"""The key-history table stays equal to the scan it replaced, through writes and retention.

``notary.sightings`` keeps one row per (host, port, SNI, SPKI) with its first
and last ``ok`` sighting, updated in the transactions that store rounds and that
delete them.  Hypothesis drives random rounds (two hosts, two SNIs, an address
with no SNI, three keys, failures, several addresses, several rounds in one
transaction) and retention passes by age and by size through the real store code
on a real SQLite file; after each step the table must equal what schema 3's
key-history query (a scan of the rounds and their ``ok`` observations, grouped by
key) gives over the rounds that remain, and every target's history must be that,
ordered and truncated as protocol.md 6.4 says.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notary import retention, sightings
from notary import store as store_mod
from notary.core import ProbeResult, Target
from notary.retention import RetentionLimits, enforce_retention, live_bytes
from notary.store import SQLiteStore, _connect
from tests.support.tls import make_ca

T0 = 1_700_000_000
TARGETS = [Target.parse(h, 443, sni) for h in ("a.example", "b.example") for sni in (None, "other.example")] + [
    Target.parse("192.0.2.9", 443)]  # an address: no SNI
#: Schema 3's key-history query, for every target at once: the reference the table must equal.
SCAN_V3 = ("SELECT r.host, r.port, r.sni, o.spki_sha256, min(o.observed_at), max(o.observed_at)"
           " FROM observations o JOIN rounds r ON r.id = o.round_id WHERE o.status = 'ok'"
           " GROUP BY r.host, r.port, r.sni, o.spki_sha256")
IPS = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]


@pytest.fixture(scope="module")
def chains() -> list[tuple[bytes, ...]]:
    ca = make_ca()
    return [tuple(x509.load_pem_x509_certificate(p.bytes()).public_bytes(Encoding.DER) for p in c.cert_chain_pems)
            for c in (ca.issue_cert("a.example", "b.example") for _ in range(3))]


@contextlib.contextmanager
def _store() -> Iterator[SQLiteStore]:
    with tempfile.TemporaryDirectory() as d:
        db = _connect(Path(d) / "observations.sqlite3")
        executor = concurrent.futures.ThreadPoolExecutor(1)  # unused: the test calls the store's jobs directly
        try:
            yield SQLiteStore(Path(d), executor, db)
        finally:
            db.close()
            executor.shutdown()


def _table(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in db.execute("SELECT host, port, sni, spki_sha256, first_seen, last_seen FROM sightings"))


def _scan(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in db.execute(SCAN_V3))


round_st = st.tuples(
    st.integers(0, len(TARGETS) - 1),  # target
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["ok", "ok", "timeout", "refused"])), min_size=1,
             max_size=3),  # (key, status) per address
    st.integers(0, 50 * 86400),  # seconds after T0
)
step_st = st.one_of(
    st.tuples(st.just("add"), st.lists(round_st, min_size=1, max_size=4)),  # rounds in one transaction
    st.tuples(st.just("age"), st.integers(0, 60)),  # max_age_days, "now" at T0 + 55 days
    st.tuples(st.just("size"), st.integers(1, 3)),  # a size bound below the live size: deletes rounds
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step_st, min_size=1, max_size=25))
def test_the_table_equals_the_scan_after_writes_and_retention(chains: list[tuple[bytes, ...]],
                                                              steps: list[tuple[str, Any]]) -> None:
    with _store() as store:
        db = store._db  # noqa: SLF001 - the store's own jobs, run here on the test's thread
        for kind, arg in steps:
            if kind == "add":
                batch: list[tuple[Sequence[ProbeResult], bool]] = []
                for ti, addrs, dt in arg:
                    t = TARGETS[ti]
                    results = [ProbeResult.success(t, IPS[i], T0 + dt, "TLSv1.3", chains[k]) if status == "ok"
                               else ProbeResult.failure(t, IPS[i], T0 + dt, status, "x")
                               for i, (k, status) in enumerate(addrs)]
                    batch.append((results, len(results) > 1))
                store._write(batch)  # noqa: SLF001 - one transaction, as a group commit
            elif kind == "age":
                enforce_retention(db, RetentionLimits(max_age_days=arg), T0 + 55 * 86400)
            else:
                bound = live_bytes(db) * arg // 4  # a quarter to three quarters of the live pages
                enforce_retention(db, RetentionLimits(max_age_days=10_000, max_bytes=bound), T0 + 55 * 86400)
            assert _table(db) == _scan(db), (kind, arg)
        for t in TARGETS:
            want = sorted(((k, f, la) for h, p, s, k, f, la in _scan(db) if (h, p, s) == (t.host, t.port, t.sni or "")),
                          key=lambda x: (-x[2], x[0]))[:2]
            got = [(h.spki_sha256, h.first_seen, h.last_seen) for h in sightings.read(db, t, 2)]
            assert got == want


def test_a_key_seen_again_widens_its_sighting_and_retention_narrows_it(chains: list[tuple[bytes, ...]]) -> None:
    """The plain story: first and last move out with new sightings, in with retention, and a key
    whose every sighting is deleted leaves the history."""
    t = TARGETS[0]
    day = 86400
    with _store() as store:
        db = store._db  # noqa: SLF001
        for at, k in [(T0 + 10 * day, 0), (T0 + 2 * day, 0), (T0 + 20 * day, 0), (T0 + 3 * day, 1)]:
            store._write([([ProbeResult.success(t, IPS[0], at, "TLSv1.3", chains[k])], False)])  # noqa: SLF001
        history = sightings.read(db, t, 32)
        assert [(h.first_seen, h.last_seen) for h in history] == [(T0 + 2 * day, T0 + 20 * day),
                                                                  (T0 + 3 * day, T0 + 3 * day)]
        # Keep 35 days at T0 + 40 days: the sightings before T0 + 5 days go, and key 1 with them.
        enforce_retention(db, RetentionLimits(max_age_days=35), T0 + 40 * day)
        history = sightings.read(db, t, 32)
        assert [(h.first_seen, h.last_seen) for h in history] == [(T0 + 10 * day, T0 + 20 * day)]
        assert _table(db) == _scan(db)


async def test_a_retention_pass_lets_the_notarys_own_commits_run_between_its_transactions(
        chains: list[tuple[bytes, ...]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each transaction of a pass is its own job on the store thread: a commit asked for during the
    pass runs between two of them instead of after the whole pass."""
    monkeypatch.setattr(sightings, "CHUNK", 10)
    monkeypatch.setattr(retention, "TRANSACTION_SECONDS", 0.0)  # one chunk a transaction
    monkeypatch.setattr(store_mod, "WAL_REWIND_BYTES", 0)  # every checkpoint rewinds the log
    t = TARGETS[0]
    store = await SQLiteStore.open(tmp_path / "observations.sqlite3")
    statements: list[str] = []
    try:
        await asyncio.gather(*(store.add([ProbeResult.success(t, IPS[0], T0 + i, "TLSv1.3", chains[i % 3])],
                                         all_addresses=False) for i in range(105)))
        await store._run(lambda: store._db.set_trace_callback(statements.append), "trace")  # noqa: SLF001
        late = ProbeResult.success(t, IPS[1], T0 + 10_000_000, "TLSv1.3", chains[0])


        async def add_once_the_pass_deletes() -> tuple[Any, ...] | None:
            for _ in range(5000):  # bounded: 5 s
                if any(s.startswith("DELETE FROM rounds") for s in list(statements)):
                    break
                await asyncio.sleep(0.001)
            return await store.add([late], all_addresses=False)

        counts, history = await asyncio.gather(
            store.enforce_retention(RetentionLimits(max_age_days=1), T0 + 100 + 86400), add_once_the_pass_deletes())
        rows = await store._run(lambda: (_table(store._db), _scan(store._db)), "compare")  # noqa: SLF001
        autocheckpoint = await store._run(  # noqa: SLF001
            lambda: store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0], "read")  # noqa: SLF001
    finally:
        await store.close()
    assert counts["rounds_by_age"] == 100
    deletes = [i for i, s in enumerate(statements) if s.startswith("DELETE FROM rounds")]
    commits = sum(1 for s in statements if s == "COMMIT")
    assert len(deletes) == 10 and commits >= 11  # ten chunks of ten, a transaction each, and the late add
    inserted = next(i for i, s in enumerate(statements) if s.startswith("INSERT INTO rounds"))
    assert deletes[0] < inserted < deletes[-1]  # the add ran inside the pass, between two transactions
    assert history is not None and {h.last_seen for h in history} >= {T0 + 10_000_000}
    assert rows[0] == rows[1]
    # The log is checkpointed after each transaction, in a job of its own, and rewound when it is
    # over the bound; the automatic checkpoint is off during the pass and back to SQLite's default
    # (1000 pages) after it.
    passive = [i for i, s in enumerate(statements) if s == "PRAGMA wal_checkpoint(PASSIVE)"]
    rewinds = [i for i, s in enumerate(statements) if s == "PRAGMA wal_checkpoint(RESTART)"]
    assert len(passive) >= 10 and all(any(c > d for c in passive) for d in deletes)
    assert len(rewinds) >= 10  # over WAL_REWIND_BYTES (0 here): each passive checkpoint is followed by a rewind
    assert statements.index("PRAGMA wal_autocheckpoint=0") < deletes[0]
    assert autocheckpoint == 1000
