"""Observation history: an interface and its embedded SQLite implementation.

The store keeps every :class:`~notary.core.ProbeResult` a notary made, keyed by
(host, port, ip), and answers two questions: the latest probe round for a
target (for the cache) and the key history of a target (first and last sighting
of each distinct SPKI, per host, port and SNI).  A result is committed *before* the notary signs and
returns it, and the database runs in WAL mode with ``synchronous=FULL``, so an
observation that reached a client survives ``kill -9`` and power loss.

:class:`Store` is the interface; a PostgreSQL backend implements the same
coroutines.

:class:`SQLiteStore` runs the standard library's ``sqlite3`` on one dedicated
thread: every database call is serialised there (no interleaved transactions),
and concurrent :meth:`~SQLiteStore.add` calls are *group-committed*: all rounds
waiting when the writer runs go into one transaction with one fsync.  A failed
transaction is rolled back whole and every waiting caller gets a
:class:`~notary.errors.StoreError`.

Several processes may open the same file (``parallax serve --workers N``, see
:mod:`notary.workers`): each keeps its one writer thread; across processes
SQLite's file lock serialises the writers, and ``busy_timeout`` (5 s) makes a
``BEGIN IMMEDIATE`` wait for another process's commit instead of failing.  WAL
readers never block.  ``tests/test_workers.py`` runs two processes writing
concurrently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

from notary.core import KeySighting, ProbeResult, Target
from notary.errors import StoreError

__all__ = ["Store", "SQLiteStore", "prepare_store"]

T = TypeVar("T")


class Store(Protocol):
    """Where a notary keeps its observations."""

    async def add(self, results: Sequence[ProbeResult], *, all_addresses: bool) -> None:
        """Durably record one probe round (one or several addresses) of a target."""

    async def latest(self, target: Target, *, all_addresses: bool) -> list[ProbeResult]:
        """The most recent probe round for ``target`` (empty when never probed)."""

    async def key_history(self, target: Target, *, limit: int = 32) -> tuple[KeySighting, ...]:
        """Each distinct key seen for ``target`` (host, port *and* SNI), first and last sighting, newest first."""

    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL, port INTEGER NOT NULL, sni TEXT NOT NULL,
    all_addresses INTEGER NOT NULL, observed_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rounds_target ON rounds (host, port, sni, all_addresses, id);
CREATE TABLE IF NOT EXISTS observations (
    id INTEGER PRIMARY KEY,
    round_id INTEGER NOT NULL REFERENCES rounds(id),
    host TEXT NOT NULL, port INTEGER NOT NULL, ip TEXT,
    status TEXT NOT NULL, spki_sha256 TEXT, observed_at INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS observations_hpi ON observations (host, port, ip, observed_at);
CREATE INDEX IF NOT EXISTS observations_keys ON observations (host, port, spki_sha256);
CREATE INDEX IF NOT EXISTS observations_round ON observations (round_id);
"""

_Round = tuple[Sequence[ProbeResult], bool]


def _connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database: busy timeout first (another process may hold the
    lock while switching to WAL or creating the schema), then WAL, FULL sync, the schema."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def prepare_store(path: str | Path) -> None:
    """Create or check the database file synchronously (no threads): for a parent process
    before it forks workers.  Raises :class:`StoreError` for an unusable file."""
    try:
        _connect(Path(path)).close()
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open observation store {path}: {exc}") from None


class SQLiteStore:
    """One SQLite file, WAL mode, one connection used only from its own thread."""

    def __init__(self, path: Path, executor: concurrent.futures.ThreadPoolExecutor, db: sqlite3.Connection) -> None:
        self.path = path
        self._executor = executor
        self._db = db
        self._pending: list[tuple[_Round, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> "SQLiteStore":
        path = Path(path)
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="parallax-store")

        try:
            db = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            raise StoreError(f"cannot open observation store {path}: {exc}") from None
        return cls(path, executor, db)

    async def _run(self, fn: Callable[[], T], what: str) -> T:
        if self._closed:
            raise StoreError("the observation store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except (sqlite3.Error, RuntimeError) as exc:
            raise StoreError(f"cannot {what}: {exc}") from None

    # -- writes: group commit ---------------------------------------------------
    async def add(self, results: Sequence[ProbeResult], *, all_addresses: bool) -> None:
        if not results:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((results, all_addresses), fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await asyncio.shield(fut)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._run(lambda: self._write([r for r, _ in batch]), "record observations")  # noqa: B023 (awaited here)
            except Exception as exc:  # every waiter gets it; none is left hanging
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreError(f"cannot record observations: {exc}"))
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    def _write(self, rounds: list[_Round]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for results, all_addresses in rounds:
                t = results[0].target
                cur = db.execute(
                    "INSERT INTO rounds (host, port, sni, all_addresses, observed_at) VALUES (?,?,?,?,?)",
                    (t.host, t.port, t.sni or "", int(all_addresses), results[0].observed_at),
                )
                round_id = cur.lastrowid
                db.executemany(
                    "INSERT INTO observations (round_id, host, port, ip, status, spki_sha256, observed_at, record)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    [(round_id, r.target.host, r.target.port, r.ip, r.status, r.spki_sha256, r.observed_at,
                      r.to_record()) for r in results],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- reads ------------------------------------------------------------------
    def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return self._db.execute(sql, args).fetchall()

    async def latest(self, target: Target, *, all_addresses: bool) -> list[ProbeResult]:
        rows = await self._run(lambda: self._fetch(
            "SELECT record FROM observations WHERE round_id = (SELECT max(id) FROM rounds"
            " WHERE host=? AND port=? AND sni=? AND all_addresses=?) ORDER BY id",
            (target.host, target.port, target.sni or "", int(all_addresses)),
        ), "read observations")
        return [ProbeResult.from_record(bytes(row[0])) for row in rows]

    async def key_history(self, target: Target, *, limit: int = 32) -> tuple[KeySighting, ...]:
        # Keyed by SNI too: a key served for another name on the same address must
        # never enter this name's history (anyone can ask a notary to probe any SNI).
        rows = await self._run(lambda: self._fetch(
            "SELECT o.spki_sha256, min(o.observed_at), max(o.observed_at) FROM observations o"
            " JOIN rounds r ON r.id = o.round_id"
            " WHERE r.host=? AND r.port=? AND r.sni=? AND o.status='ok' GROUP BY o.spki_sha256"
            " ORDER BY max(o.observed_at) DESC, o.spki_sha256 LIMIT ?",
            (target.host, target.port, target.sni or "", limit),
        ), "read key history")
        return tuple(KeySighting(r[0], int(r[1]), int(r[2])) for r in rows)

    async def count(self) -> int:
        rows = await self._run(lambda: self._fetch("SELECT count(*) FROM observations", ()), "count observations")
        return int(rows[0][0])

    async def close(self) -> None:
        if self._closed:
            return
        if self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer], timeout=10)
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._db.close)
        except sqlite3.Error:
            pass
        self._executor.shutdown(wait=False)
