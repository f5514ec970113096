"""The observation store's schema, its version, and the migrations between versions.

``PRAGMA user_version`` holds the schema version.  Version 1 (the first
release; it never set ``user_version``, so it reads 0 with the tables present)
kept each observation's whole record, chain included, in its row, and stored
policy refusals.  Version 2 keeps each distinct chain once in ``chains``,
keyed by the SHA-256 of its canonical JSON (a list of base64 DER, leaf first),
and holds no ``blocked_by_policy`` rows.  Version 3 drops two indexes of
version 1 that no query uses (``observations_hpi`` and ``observations_keys``:
every read goes through ``rounds``; each index cost every commit a B-tree
insert, about 0.02 ms of the store thread's CPU a round).  Schema-2 code works
on version-3 tables unchanged (``deploy/README.md`` says how to roll back).
Version 4 keeps the key history as a table, ``sightings`` (:mod:`notary.sightings`:
reading it no longer scans every round of the target); each ``ok`` observation
names its sighting (``sighting_id``), indexed with its time.  That costs about
20 bytes per ``ok`` observation; the migration reads every observation once
and rewrites the ``ok`` ones (``deploy/README.md`` gives its time on a 1 GiB
store, and the rollback to version 3).  :func:`migrate` brings any older
database to :data:`SCHEMA_VERSION` in one transaction (a failed migration
leaves the database as it was) and refuses a newer one.  It runs when a new
notary (or ``parallax store compact``) first opens an older store; a large
version-1 store takes a while (every chain is hashed once), and the space the
old rows held is given back only by ``store compact``.  A migration writes its
changed pages to the write-ahead log before they reach the database (0.6 times
the store's size for 1 GiB going from version 3 to 4), so :func:`migrate` first
checks that the disk holding the store has the store's size and 1 MiB free, and
refuses with a :class:`~notary.errors.StoreError` naming both figures if not (a
full disk would only fail the migration, after minutes, with the host's disk
full meanwhile).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3

from notary import sightings
from notary.dbtx import write_transaction
from notary.core import ProbeResult, canonical
from notary.errors import StoreError

__all__ = ["SCHEMA_VERSION", "migrate", "split_record", "join_record", "schema_version"]

SCHEMA_VERSION = 4
#: The oldest SQLite the store runs on (``INSERT ... ON CONFLICT ... RETURNING``: 3.35, 2021).
MIN_SQLITE = (3, 35)
#: Bytes of free disk a migration needs beyond the store's own size (:func:`migrate`).
MIGRATION_MARGIN = 1 << 20

#: Version 1 exactly as the first release created it (kept for the migration tests and docs).
SCHEMA_V1 = """
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

_V2_ADDITIONS = """
ALTER TABLE observations ADD COLUMN chain_sha256 TEXT;
CREATE TABLE IF NOT EXISTS chains (sha256 TEXT PRIMARY KEY, chain BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS observations_chain ON observations (chain_sha256);
CREATE INDEX IF NOT EXISTS rounds_age ON rounds (observed_at);
"""

#: Indexes on ``observations`` that no query uses: reads go through ``rounds`` and ``round_id``
#: (``tests/test_store_schema.py`` checks every query's plan).
_V3_DROPS = """
DROP INDEX IF EXISTS observations_hpi;
DROP INDEX IF EXISTS observations_keys;
"""


#: Key history as a table (:mod:`notary.sightings`): one row per (host, port, SNI, SPKI); each
#: ``ok`` observation names its row, and a partial index finds a sighting's first and last
#: observation in two lookups (retention recounts with it).  Filled by ``sightings.FILL``.
_V4_ADDITIONS = """
CREATE TABLE IF NOT EXISTS sightings (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL, port INTEGER NOT NULL, sni TEXT NOT NULL, spki_sha256 TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    UNIQUE (host, port, sni, spki_sha256)
);
CREATE INDEX IF NOT EXISTS sightings_recent ON sightings (host, port, sni, last_seen);
ALTER TABLE observations ADD COLUMN sighting_id INTEGER REFERENCES sightings(id);
CREATE INDEX IF NOT EXISTS observations_sighting ON observations (sighting_id, observed_at)
    WHERE sighting_id IS NOT NULL
"""


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run each statement of ``script`` in the open transaction (``executescript`` would commit it)."""
    for statement in filter(None, (s.strip() for s in script.split(";"))):
        db.execute(statement)


def split_record(result: ProbeResult) -> tuple[bytes, str | None, bytes | None]:
    """(record without its chain, chain key or None, chain bytes or None) for storage."""
    if not result.chain:
        return result.to_record(), None, None
    blob = canonical.encode(result.chain_record())
    return result.to_record(with_chain=False), hashlib.sha256(blob).hexdigest(), blob


def join_record(record: bytes, chain: bytes | None) -> ProbeResult:
    """The :class:`ProbeResult` of a stored row (its chain re-attached)."""
    if chain is None:
        return ProbeResult.from_record(record)
    d = canonical.decode(record)
    d["chain"] = canonical.decode(chain)
    return ProbeResult.from_record(canonical.encode(d))


def schema_version(db: sqlite3.Connection) -> int:
    """The database's schema version: 0 for an empty database, 1 for the unversioned first release."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == 0:
        has = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='observations'").fetchone()
        return 1 if has else 0
    return version


def _v1_to_v2(db: sqlite3.Connection) -> None:
    _script(db, _V2_ADDITIONS)
    db.execute("DELETE FROM observations WHERE status = 'blocked_by_policy'")
    last = 0
    while True:
        rows = db.execute(
            "SELECT id, record FROM observations WHERE id > ? AND status = 'ok' ORDER BY id LIMIT 500", (last,)
        ).fetchall()
        if not rows:
            break
        for row_id, record in rows:
            stored, key, blob = split_record(ProbeResult.from_record(bytes(record)))
            if key is not None:
                db.execute("INSERT OR IGNORE INTO chains (sha256, chain) VALUES (?,?)", (key, blob))
            db.execute("UPDATE observations SET record = ?, chain_sha256 = ? WHERE id = ?", (stored, key, row_id))
            last = row_id
    db.execute("DELETE FROM rounds WHERE id NOT IN (SELECT round_id FROM observations)")


def _check_space(db: sqlite3.Connection, found: int) -> None:
    """Refuse to migrate a store when its disk has less free space than the store's size (bytes:
    the database file and its write-ahead log) plus :data:`MIGRATION_MARGIN`: what a migration's
    log needs, with room to spare (a small store's log outgrows it: 44 KiB for a 40 KiB store)."""
    path = next((row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not path:  # an in-memory database: nothing on disk
        return
    need = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p)) + MIGRATION_MARGIN
    free = shutil.disk_usage(os.path.dirname(path) or ".").free
    if free < need:
        mib = 1 << 20
        raise StoreError(f"migrating the store from schema {found} to {SCHEMA_VERSION} needs {need / mib:.1f} MiB of free "
                         f"disk (its size and 1 MiB) for the write-ahead log; {free / mib:.1f} MiB is free beside {path} "
                         f"(nothing was changed: free some space and start again)")


def migrate(db: sqlite3.Connection) -> int:
    """Create or migrate the schema to :data:`SCHEMA_VERSION`; return the version found.

    Raises :class:`~notary.errors.StoreError` when SQLite is older than
    :data:`MIN_SQLITE`, the store is newer than this code, or its disk has less
    free space than the store's size; the store is then unchanged.
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise StoreError(f"the observation store needs SQLite {'.'.join(map(str, MIN_SQLITE))} or later; "
                         f"this Python has {sqlite3.sqlite_version}")
    found = schema_version(db)
    if found > SCHEMA_VERSION:
        raise StoreError(f"store schema version {found} is newer than this notary understands ({SCHEMA_VERSION})")
    if found == SCHEMA_VERSION:
        return found
    if found:  # an existing store (a new one is created, not migrated)
        _check_space(db, found)
    with write_transaction(db):
        # Again under the write lock: another process (``serve --workers``) may have migrated meanwhile.
        found = schema_version(db)
        if found > SCHEMA_VERSION:
            raise StoreError(f"store schema version {found} is newer than this notary understands ({SCHEMA_VERSION})")
        if found == 0:
            _script(db, SCHEMA_V1)
        if found <= 1:
            _v1_to_v2(db)
        if found <= 2:
            _script(db, _V3_DROPS)
        if found <= 3:
            _script(db, _V4_ADDITIONS)
            for statement in sightings.FILL:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return found
