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
:class:`~notary.errors.StoreError`.  In the same job on the store thread, right
after the commit, each round's key history is read and returned by
:meth:`~SQLiteStore.add` (the service signs with it: one thread hop per probe,
not two); should that read fail, the round stays committed and ``add`` returns
None, and the caller reads the history itself.

What is guaranteed: an answer that carries a fresh observation is sent only
after the transaction holding it has committed with ``synchronous=FULL`` (the
fsync is on the cold answer's path: about 1 ms here, the largest part of a cold
observe after the handshake; ``bench/notary_cold_latency.py`` prints the
breakdown).  Nothing answered is kept only in memory.

Each distinct presented chain is stored once, in ``chains``, keyed by the
SHA-256 of its canonical form (content-addressed); an observation row keeps
only a reference.  The schema is versioned (``PRAGMA user_version``) and
migrated forward on open (:mod:`notary.migrations`).  Retention by age and by
total size (:mod:`notary.retention`) runs through :meth:`SQLiteStore.enforce_retention`.

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
import contextlib
import fcntl
import sqlite3
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar, cast

from notary import sightings
from notary.core import KeySighting, ProbeResult, Target
from notary.dbtx import write_transaction
from notary.errors import StoreError
from notary.migrations import SCHEMA_VERSION, join_record, migrate, split_record
from notary.retention import RetentionLimits, live_bytes, retention_steps

__all__ = ["Store", "SQLiteStore", "SCHEMA_VERSION", "prepare_store"]

T = TypeVar("T")


#: Key sightings a history holds at most (newest last sighting first).
HISTORY_LIMIT = 32
#: Bytes of write-ahead log above which a retention pass rewinds it (a RESTART checkpoint).
WAL_REWIND_BYTES = 64 * 1024 * 1024
#: Seconds a retention pass pauses after each of its transactions (another process's turn).
RETENTION_PAUSE = 0.02


class Store(Protocol):
    """Where a notary keeps its observations."""

    async def add(self, results: Sequence[ProbeResult], *, all_addresses: bool) -> tuple[KeySighting, ...] | None:
        """Durably record one probe round (one or several addresses) of a target.

        May return the target's key history as of just after the write (what
        :meth:`key_history` would then return), saving the caller a second read; None if not.
        """

    async def latest(self, target: Target, *, all_addresses: bool) -> list[ProbeResult]:
        """The most recent probe round for ``target`` (empty when never probed)."""

    async def key_history(self, target: Target, *, limit: int = HISTORY_LIMIT) -> tuple[KeySighting, ...]:
        """Each distinct key seen for ``target`` (host, port *and* SNI), first and last sighting, newest first."""

    async def close(self) -> None: ...


_Round = tuple[Sequence[ProbeResult], bool]


def _connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database: busy timeout first (another process may hold the
    lock while switching to WAL or migrating the schema), then WAL, FULL sync, the schema
    (created or migrated forward: :mod:`notary.migrations`)."""
    # Processes opening one new file at once (``--workers``) would race to switch it to WAL and to
    # create the schema; SQLite answers one of them "database is locked" without waiting.  A lock
    # file beside the database serialises the opening (not the use) across processes.
    with open(path.with_name(path.name + ".open-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            migrate(db)
        except BaseException:
            db.close()
            raise
    return db


def prepare_store(path: str | Path) -> None:
    """Create or check the database file synchronously (no threads): for a parent process
    before it forks workers.  Raises :class:`StoreError` for an unusable file."""
    try:
        _connect(Path(path)).close()
    except (sqlite3.Error, OSError, StoreError) as exc:
        raise StoreError(f"cannot open observation store {path}: {exc}") from None


class SQLiteStore:
    """One SQLite file, WAL mode, one connection used only from its own thread."""

    def __init__(self, path: Path, executor: concurrent.futures.ThreadPoolExecutor, db: sqlite3.Connection) -> None:
        self.path = path
        self._executor = executor
        self._db = db
        self._pending: list[tuple[_Round, asyncio.Future[tuple[KeySighting, ...] | None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> "SQLiteStore":
        path = Path(path)
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="parallax-store")

        try:
            db = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except (sqlite3.Error, OSError, StoreError) as exc:
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
    async def add(self, results: Sequence[ProbeResult], *, all_addresses: bool) -> tuple[KeySighting, ...] | None:
        """Commit the round (group commit), then return the target's key history read right after
        the commit on the same thread (None if that read failed: the round is committed all the same)."""
        if not results:
            return None
        fut: asyncio.Future[tuple[KeySighting, ...] | None] = asyncio.get_running_loop().create_future()
        self._pending.append(((results, all_addresses), fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await asyncio.shield(fut)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                histories = await self._run(lambda: self._write_and_read([r for r, _ in batch]),  # noqa: B023
                                            "record observations")
            except Exception as exc:  # every waiter gets it; none is left hanging
                why = str(exc) if isinstance(exc, StoreError) else f"cannot record observations: {exc}"  # said once
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreError(why))
            else:
                for (_, fut), history in zip(batch, histories):
                    if not fut.done():
                        fut.set_result(history)

    def _write_and_read(self, rounds: list[_Round]) -> list[tuple[KeySighting, ...] | None]:
        """One job on the store thread: commit ``rounds``, then read each target's key history."""
        self._write(rounds)
        out: list[tuple[KeySighting, ...] | None] = []
        for results, _ in rounds:
            try:
                out.append(self._history(results[0].target, HISTORY_LIMIT))
            except sqlite3.Error:
                out.append(None)  # committed; the caller reads the history itself
        return out

    def _write(self, rounds: list[_Round]) -> None:
        db = self._db
        with write_transaction(db):
            for results, all_addresses in rounds:
                t = results[0].target
                cur = db.execute(
                    "INSERT INTO rounds (host, port, sni, all_addresses, observed_at) VALUES (?,?,?,?,?)",
                    (t.host, t.port, t.sni or "", int(all_addresses), results[0].observed_at),
                )
                round_id = cur.lastrowid
                rows = []
                for r, sighting in zip(results, sightings.record(db, results)):
                    record, chain_key, chain = split_record(r)
                    if chain_key is not None:
                        db.execute("INSERT OR IGNORE INTO chains (sha256, chain) VALUES (?,?)", (chain_key, chain))
                    rows.append((round_id, r.target.host, r.target.port, r.ip, r.status, r.spki_sha256,
                                 r.observed_at, record, chain_key, sighting))
                db.executemany(
                    "INSERT INTO observations (round_id, host, port, ip, status, spki_sha256, observed_at, record,"
                    " chain_sha256, sighting_id) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )

    # -- reads ------------------------------------------------------------------
    def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return self._db.execute(sql, args).fetchall()

    async def latest(self, target: Target, *, all_addresses: bool) -> list[ProbeResult]:
        rows = await self._run(lambda: self._fetch(
            "SELECT o.record, c.chain FROM observations o LEFT JOIN chains c ON c.sha256 = o.chain_sha256"
            " WHERE o.round_id = (SELECT max(id) FROM rounds"
            " WHERE host=? AND port=? AND sni=? AND all_addresses=?) ORDER BY o.id",
            (target.host, target.port, target.sni or "", int(all_addresses)),
        ), "read observations")
        return [join_record(bytes(row[0]), None if row[1] is None else bytes(row[1])) for row in rows]

    async def key_history(self, target: Target, *, limit: int = HISTORY_LIMIT) -> tuple[KeySighting, ...]:
        return await self._run(lambda: self._history(target, limit), "read key history")

    def _history(self, target: Target, limit: int) -> tuple[KeySighting, ...]:
        return sightings.read(self._db, target, limit)

    async def count(self) -> int:
        rows = await self._run(lambda: self._fetch("SELECT count(*) FROM observations", ()), "count observations")
        return int(rows[0][0])

    async def enforce_retention(self, limits: RetentionLimits, now: int) -> dict[str, int]:
        """Delete what :class:`~notary.retention.RetentionLimits` no longer keeps; return the counts.

        Each of the pass's transactions (:func:`~notary.retention.retention_steps`) is its own
        job on the store thread, so commits and reads waiting meanwhile run between them, and
        the pass pauses :data:`RETENTION_PAUSE` seconds after each, so that another process
        (``--workers``) waiting for the write lock gets it.  Each checkpoint of the write-ahead
        log is a job of its own too: during a pass SQLite's automatic checkpoint (inside a
        commit, about 0.3 s after a retention transaction on a 1 GiB store) is off, and a
        passive checkpoint runs after each transaction instead.  Once the log holds more than
        :data:`WAL_REWIND_BYTES` a RESTART checkpoint follows, which rewinds it: with another
        process committing all the while, passive checkpoints never reach the log's end, and
        the log grew to 9 GiB during a pass over half of a 1 GiB store.  On such a store a
        retention transaction leaves 75-98 MiB of log, so most are followed by a RESTART;
        without the pause that locked the other process out (11 of its commits gave up after
        5 s).  Measured with the pause, a second process committing every 50 ms through that
        pass: the log peaked at 106 MiB and none of its 197 commits failed (longest wait 1.5 s).
        """
        steps = retention_steps(self._db, limits, now)

        def step() -> dict[str, int] | None:
            try:
                next(steps)
            except StopIteration as done:
                return cast(dict[str, int], done.value)
            return None

        def pragma(sql: str) -> int:
            row = self._db.execute(sql).fetchone()
            return int(row[0]) if row else 0

        def checkpoint() -> None:
            _busy, frames, _done = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames * page_size > WAL_REWIND_BYTES:
                self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()

        def begin() -> tuple[int, int]:
            pages = pragma("PRAGMA wal_autocheckpoint")
            pragma("PRAGMA wal_autocheckpoint=0")
            return pages, pragma("PRAGMA page_size")

        pages, page_size = await self._run(begin, "apply retention")
        try:
            while True:
                counts = await self._run(step, "apply retention")
                await self._run(checkpoint, "apply retention")
                if counts is not None:
                    return counts
                await asyncio.sleep(RETENTION_PAUSE)
        finally:
            with contextlib.suppress(StoreError):
                await self._run(lambda: pragma(f"PRAGMA wal_autocheckpoint={pages}"), "apply retention")

    async def live_bytes(self) -> int:
        """Bytes of database pages in use (what ``RetentionLimits.max_bytes`` bounds)."""
        return await self._run(lambda: live_bytes(self._db), "read the store size")

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
