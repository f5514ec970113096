"""Observation history: an interface and its embedded SQLite implementation.

The store keeps every :class:`~notary.core.ProbeResult` a notary made, keyed by
(host, port, ip), and answers two questions: the latest observation set for a
target (for the cache) and the key history of a target (first and last sighting
of each distinct SPKI).  A result is committed *before* the notary signs and
returns it, and the database runs in WAL mode with ``synchronous=FULL``, so an
observation that reached a client survives ``kill -9`` and power loss.

:class:`Store` is the interface; a PostgreSQL backend implements the same four
coroutines.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Protocol, Sequence

import aiosqlite

from notary.core import KeySighting, ProbeResult, Target
from notary.errors import StoreError

__all__ = ["Store", "SQLiteStore"]


class Store(Protocol):
    """Where a notary keeps its observations."""

    async def add(self, results: Sequence[ProbeResult], *, all_addresses: bool) -> None:
        """Durably record one probe round (one or several addresses) of a target."""

    async def latest(self, target: Target, *, all_addresses: bool) -> list[ProbeResult]:
        """The most recent probe round for ``target`` (empty when never probed)."""

    async def key_history(self, host: str, port: int, *, limit: int = 32) -> tuple[KeySighting, ...]:
        """Each distinct key seen for host:port, with first and last sighting, newest first."""

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
"""


class SQLiteStore:
    """One SQLite file, WAL mode, one connection on its own thread (aiosqlite)."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str | Path) -> "SQLiteStore":
        path = Path(path)
        db: aiosqlite.Connection | None = None
        try:
            db = await aiosqlite.connect(path)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.executescript(_SCHEMA)
            await db.commit()
        except (sqlite3.Error, OSError) as exc:
            # Close a half-opened connection: its worker thread is not a daemon, and
            # left running it keeps the process from exiting (serve hung on a bad file).
            if db is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await db.close()
            raise StoreError(f"cannot open observation store {path}: {exc}") from None
        return cls(db, path)

    async def add(self, results: Sequence[ProbeResult], *, all_addresses: bool) -> None:
        if not results:
            return
        t = results[0].target
        try:
            cur = await self._db.execute(
                "INSERT INTO rounds (host, port, sni, all_addresses, observed_at) VALUES (?,?,?,?,?)",
                (t.host, t.port, t.sni or "", int(all_addresses), results[0].observed_at),
            )
            round_id = cur.lastrowid
            await self._db.executemany(
                "INSERT INTO observations (round_id, host, port, ip, status, spki_sha256, observed_at, record)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [
                    (round_id, r.target.host, r.target.port, r.ip, r.status, r.spki_sha256,
                     r.observed_at, r.to_record())
                    for r in results
                ],
            )
            await self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record observation: {exc}") from None

    async def latest(self, target: Target, *, all_addresses: bool) -> list[ProbeResult]:
        try:
            async with self._db.execute(
                "SELECT record FROM observations WHERE round_id = (SELECT max(id) FROM rounds"
                " WHERE host=? AND port=? AND sni=? AND all_addresses=?) ORDER BY id",
                (target.host, target.port, target.sni or "", int(all_addresses)),
            ) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read observations: {exc}") from None
        return [ProbeResult.from_record(bytes(row[0])) for row in rows]

    async def key_history(self, host: str, port: int, *, limit: int = 32) -> tuple[KeySighting, ...]:
        try:
            async with self._db.execute(
                "SELECT spki_sha256, min(observed_at), max(observed_at) FROM observations"
                " WHERE host=? AND port=? AND status='ok' GROUP BY spki_sha256"
                " ORDER BY max(observed_at) DESC, spki_sha256 LIMIT ?",
                (host, port, limit),
            ) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read key history: {exc}") from None
        return tuple(KeySighting(r[0], int(r[1]), int(r[2])) for r in rows)

    async def count(self) -> int:
        async with self._db.execute("SELECT count(*) FROM observations") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        try:
            await self._db.close()
        except (sqlite3.Error, ValueError):
            pass
