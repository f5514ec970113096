"""Retention of the observation store: by age, by total size, and the ``store`` command's logic.

A notary keeps its probe rounds for ``max_age_days`` (default 90) and at most
``max_bytes`` of live database pages (default 1 GiB); whichever bound is hit
first wins, oldest rounds first.  Chains no longer referenced by any
observation are deleted with them.  Retention runs every ``interval`` seconds
(default 300) while the notary serves, at once when a check of the live size
(every ``size_check`` seconds, default 10) finds it over the bound, and on
``parallax store compact``.

Deleted pages are reused by SQLite, so the file stops growing once the bound
is reached, but it does not shrink: ``store compact`` also checkpoints the
write-ahead log and runs ``VACUUM`` to give the space back to the file system.
Key history (first and last sighting of each key) covers the retained rounds
only.  Sizes in bytes, ages in days, times in seconds.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, cast

from notary import sightings
from notary.dbtx import write_transaction
from notary.errors import StoreError

__all__ = ["RetentionLimits", "enforce_retention", "retention_steps", "live_bytes", "store_info", "compact"]


@dataclass(frozen=True, slots=True)
class RetentionLimits:
    """``max_age_days`` days, ``max_bytes`` bytes of live pages, enforced every ``interval`` seconds (0: never).

    Between passes the live size is looked at every ``size_check`` seconds (a page count,
    microseconds), and a pass runs at once when it is over ``max_bytes``: the store
    overshoots its bound by at most what is written in ``size_check`` seconds.
    """

    max_age_days: int = 90
    max_bytes: int = 1024 ** 3
    interval: float = 300.0
    size_check: float = 10.0


def live_bytes(db: sqlite3.Connection) -> int:
    """Bytes of the database's pages in use (page count minus free pages, times the page size)."""
    return _live_bytes(db)


def _live_bytes(db: sqlite3.Connection) -> int:
    page = int(db.execute("PRAGMA page_size").fetchone()[0])
    count = int(db.execute("PRAGMA page_count").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    return (count - free) * page


#: A retention transaction takes no more work after this many seconds: another writer
#: (this notary's own commits, another ``--workers`` process) waits about that long at most,
#: while a pass still commits seldom (each commit rewrites the index pages it touched).
TRANSACTION_SECONDS = 0.25
#: Chains looked at a step when dropping the unreferenced ones (keyset windows).
CHAIN_WINDOW = 2000

#: A retention pass as steps: each ``next()`` runs whole transactions (at least one), commits,
#: and returns; the pass's counts come with ``StopIteration``.
Steps = Generator[None, None, dict[str, int]]


def retention_steps(db: sqlite3.Connection, limits: RetentionLimits, now: int) -> Steps:
    """Delete rounds older than the age bound, then the oldest rounds until the live size is
    under ``max_bytes``, dropping unreferenced chains after each; return the counts.

    Each step is one transaction of at most about :data:`TRANSACTION_SECONDS` of work, so
    a caller can let other database work run between steps (:class:`notary.store.SQLiteStore`
    does); :func:`enforce_retention` runs them all.
    """
    out = {"rounds_by_age": 0, "rounds_by_size": 0, "chains": 0}
    cutoff = now - limits.max_age_days * 86400
    out["rounds_by_age"] = yield from _delete_rounds(db, "observed_at < ?", (cutoff,))
    out["chains"] += yield from _drop_orphan_chains(db)
    while _live_bytes(db) > limits.max_bytes:
        total = int(db.execute("SELECT count(*) FROM rounds").fetchone()[0])
        if total == 0:
            break
        batch = max(1, total // 10)  # a tenth at a time: the size bound is approximate, the work bounded
        last = db.execute("SELECT id FROM rounds ORDER BY id LIMIT 1 OFFSET ?", (batch - 1,)).fetchone()
        if last is None:  # another process deleted rounds meanwhile
            continue
        out["rounds_by_size"] += yield from _delete_rounds(db, "id <= ?", (int(last[0]),))
        out["chains"] += yield from _drop_orphan_chains(db)
    return out


def enforce_retention(db: sqlite3.Connection, limits: RetentionLimits, now: int) -> dict[str, int]:
    """Run a whole retention pass (:func:`retention_steps`) and return its counts."""
    steps = retention_steps(db, limits, now)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(dict[str, int], done.value)


def _in_transactions(db: sqlite3.Connection, work: Callable[[], bool]) -> Generator[None, None, None]:
    """Call ``work`` (True: more to do) in transactions of about :data:`TRANSACTION_SECONDS`, a step each."""
    more = True
    while more:
        started = time.monotonic()
        with write_transaction(db):
            while (more := work()) and time.monotonic() - started < TRANSACTION_SECONDS:
                pass
        yield


def _delete_rounds(db: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> Generator[None, None, int]:
    """Delete every round ``where`` selects, with its observations; return how many.

    :data:`~notary.sightings.CHUNK` rounds at a time, each chunk recounting the key history
    its observations counted in, so memory is bounded by a chunk whatever the pass deletes.
    """
    deleted = 0

    def chunk() -> bool:
        nonlocal deleted
        ids = [r[0] for r in db.execute(f"SELECT id FROM rounds WHERE {where} LIMIT {sightings.CHUNK}", args)]
        if ids:
            marks = ",".join("?" * len(ids))
            touched = sightings.sightings_of_rounds(db, ids)
            db.execute(f"DELETE FROM observations WHERE round_id IN ({marks})", ids)
            deleted += db.execute(f"DELETE FROM rounds WHERE id IN ({marks})", ids).rowcount
            sightings.recount(db, touched)
        return len(ids) == sightings.CHUNK

    yield from _in_transactions(db, chunk)
    return deleted


def _drop_orphan_chains(db: sqlite3.Connection) -> Generator[None, None, int]:
    """Delete the chains no observation refers to, :data:`CHAIN_WINDOW` chains looked at a time."""
    dropped, after = 0, ""

    def window() -> bool:
        nonlocal dropped, after
        rows = db.execute("SELECT sha256 FROM chains WHERE sha256 > ? ORDER BY sha256 LIMIT ?",
                          (after, CHAIN_WINDOW)).fetchall()
        if not rows:
            return False
        last = str(rows[-1][0])
        dropped += db.execute(
            "DELETE FROM chains WHERE sha256 > ? AND sha256 <= ?"
            " AND NOT EXISTS (SELECT 1 FROM observations o WHERE o.chain_sha256 = chains.sha256)", (after, last),
        ).rowcount
        after = last
        return len(rows) == CHAIN_WINDOW

    yield from _in_transactions(db, window)
    return dropped


def _open(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    from notary.migrations import migrate

    if not path.exists():
        raise StoreError(f"no observation store at {path}")
    try:
        if read_only:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        else:
            db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        if not read_only:
            migrate(db)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open observation store {path}: {exc}") from None
    return db


def store_info(path: Path) -> dict[str, Any]:
    """Sizes and counts of the store at ``path``.  Only reads: an older schema is reported, not migrated
    (``chains`` is ``None`` before version 2, which stored each chain in its observation's row)."""
    from notary.migrations import schema_version

    db = _open(path, read_only=True)
    try:
        def one(sql: str) -> Any:
            return db.execute(sql).fetchone()[0]
        wal = path.with_name(path.name + "-wal")
        version = schema_version(db)
        return {
            "path": str(path),
            "schema_version": version,
            "file_bytes": path.stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            "live_bytes": _live_bytes(db),
            "rounds": int(one("SELECT count(*) FROM rounds")),
            "observations": int(one("SELECT count(*) FROM observations")),
            "chains": int(one("SELECT count(*) FROM chains")) if version >= 2 else None,
            "oldest": one("SELECT min(observed_at) FROM rounds"),
            "newest": one("SELECT max(observed_at) FROM rounds"),
        }
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read observation store {path}: {exc}") from None
    finally:
        db.close()


def compact(path: Path, limits: RetentionLimits, now: int) -> dict[str, Any]:
    """Apply retention, checkpoint the WAL and ``VACUUM``; return what was deleted and the sizes."""
    before = path.stat().st_size if path.exists() else 0
    db = _open(path)
    try:
        deleted = enforce_retention(db, limits, now)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot compact observation store {path}: {exc}") from None
    finally:
        db.close()
    return {"deleted": deleted, "file_bytes_before": before, "file_bytes_after": path.stat().st_size}
