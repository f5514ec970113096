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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from notary import sightings
from notary.errors import StoreError

__all__ = ["RetentionLimits", "enforce_retention", "live_bytes", "store_info", "compact"]


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


def _transaction(db: sqlite3.Connection, job: Callable[[], int]) -> int:
    db.execute("BEGIN IMMEDIATE")
    try:
        out = job()
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return out


def _delete_rounds(db: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> int:
    """Delete every round ``where`` selects, with its observations; return how many.

    At most :data:`~notary.sightings.CHUNK` rounds a transaction, each recounting the key
    history its observations counted in: memory and the write lock's hold are bounded
    by a chunk, whatever the pass deletes (another ``--workers`` process waits for one
    chunk, not the pass).
    """
    def chunk() -> int:
        ids = [r[0] for r in db.execute(f"SELECT id FROM rounds WHERE {where} LIMIT {sightings.CHUNK}", args)]
        if ids:
            marks = ",".join("?" * len(ids))
            touched = sightings.sightings_of_rounds(db, ids)
            db.execute(f"DELETE FROM observations WHERE round_id IN ({marks})", ids)
            db.execute(f"DELETE FROM rounds WHERE id IN ({marks})", ids)
            sightings.recount(db, touched)
        return len(ids)

    deleted = 0
    while n := _transaction(db, chunk):
        deleted += n
    return deleted


def enforce_retention(db: sqlite3.Connection, limits: RetentionLimits, now: int) -> dict[str, int]:
    """Delete rounds older than the age bound, then the oldest rounds until the live size is
    under ``max_bytes``, then unreferenced chains.  Runs in its own transactions (one per
    :data:`~notary.sightings.CHUNK` rounds)."""
    out = {"rounds_by_age": 0, "rounds_by_size": 0, "chains": 0}
    cutoff = now - limits.max_age_days * 86400
    out["rounds_by_age"] = _delete_rounds(db, "observed_at < ?", (cutoff,))
    out["chains"] += _transaction(db, lambda: _drop_orphan_chains(db))
    while _live_bytes(db) > limits.max_bytes:
        total = int(db.execute("SELECT count(*) FROM rounds").fetchone()[0])
        if total == 0:
            break
        batch = max(1, total // 10)  # a tenth at a time: the size bound is approximate, the work bounded
        last = db.execute("SELECT id FROM rounds ORDER BY id LIMIT 1 OFFSET ?", (batch - 1,)).fetchone()
        if last is None:  # another process deleted rounds meanwhile
            continue
        out["rounds_by_size"] += _delete_rounds(db, "id <= ?", (int(last[0]),))
        out["chains"] += _transaction(db, lambda: _drop_orphan_chains(db))
    return out


def _drop_orphan_chains(db: sqlite3.Connection) -> int:
    cur = db.execute(
        "DELETE FROM chains WHERE NOT EXISTS (SELECT 1 FROM observations o WHERE o.chain_sha256 = chains.sha256)"
    )
    return cur.rowcount


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
