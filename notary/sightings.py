"""Key history, kept as a table of sightings so reading it costs the same at any store age.

A target's key history (protocol.md 6.4) is, for each distinct SPKI hash in its
``ok`` observations (same host, port and SNI, any address), the first and last
``observed_at``.  Computed from the observations, that is a scan of every round
the target ever had: about 18 ms on this machine for a target probed every 5
minutes for the default 90 days of retention, on the one store thread, for
every cold probe (``bench/store_history.py``).

The ``sightings`` table (schema version 4, :mod:`notary.migrations`) holds that
answer, one row per (host, port, SNI, SPKI), and each ``ok`` observation names
its row (``observations.sighting_id``; NULL for a failure).  It is exact, not an
estimate:

* :func:`record` runs in the transaction that stores the observations: a later
  sighting only widens ``first_seen``/``last_seen``;
* :func:`recount` runs in the transaction that deletes rounds (retention, for
  each :data:`CHUNK` rounds): each sighting whose observations lost rows gets its
  first and last ``observed_at`` again from the rows that remain (two lookups in
  the partial index ``observations_sighting``, then one write), or is deleted
  when none remains;
* :func:`read` takes the newest ``limit`` rows by ``last_seen`` from the index
  ``sightings_recent``: a key-rotating server with thousands of keys costs
  ``limit`` rows, not thousands.

What it costs, measured on a 1 GiB store (10,000 targets, 1.5 million rounds):
about 18 bytes per ``ok`` observation (its ``sighting_id`` and index entry), 3%
of the store; and about 360 bytes per distinct target and key (the row, its
unique index and ``sightings_recent``), which matters only for a server that
shows a new key on every probe (such a store grew 40%).

``tests/test_sightings.py`` checks the table against schema 3's scan.
"""

from __future__ import annotations

import sqlite3
from typing import Iterable, Sequence

from notary.core import KeySighting, ProbeResult, Target

__all__ = ["CHUNK", "FILL", "record", "recount", "read", "sightings_of_rounds"]

#: Rounds deleted (and sightings recounted) in one retention transaction at most.
CHUNK = 500

#: Fill the table and the observations' ``sighting_id`` from the observations themselves
#: (the migration to schema 4): schema 3's key-history scan, for every target at once.
FILL = (
    "INSERT INTO sightings (host, port, sni, spki_sha256, first_seen, last_seen)"
    " SELECT r.host, r.port, r.sni, o.spki_sha256, min(o.observed_at), max(o.observed_at)"
    " FROM observations o JOIN rounds r ON r.id = o.round_id WHERE o.status = 'ok' AND o.spki_sha256 IS NOT NULL"
    " GROUP BY r.host, r.port, r.sni, o.spki_sha256",
    "UPDATE observations SET sighting_id = (SELECT s.id FROM rounds r JOIN sightings s"
    " ON s.host = r.host AND s.port = r.port AND s.sni = r.sni AND s.spki_sha256 = observations.spki_sha256"
    " WHERE r.id = observations.round_id) WHERE status = 'ok' AND spki_sha256 IS NOT NULL",
)

_UPSERT = (
    "INSERT INTO sightings (host, port, sni, spki_sha256, first_seen, last_seen) VALUES (?,?,?,?,?,?)"
    " ON CONFLICT (host, port, sni, spki_sha256) DO UPDATE SET"
    " first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)"
    " RETURNING id"  # SQLite 3.35 (2021) or later
)


def record(db: sqlite3.Connection, results: Sequence[ProbeResult]) -> list[int | None]:
    """Count one round's ``ok`` results in the sightings; return each result's sighting id (None: not ok).

    In the caller's transaction, before the observations are inserted.
    """
    ids: list[int | None] = []
    for r in results:
        if r.status != "ok" or not r.spki_sha256:
            ids.append(None)
            continue
        row = db.execute(_UPSERT, (r.target.host, r.target.port, r.target.sni or "", r.spki_sha256,
                                   r.observed_at, r.observed_at)).fetchone()
        ids.append(int(row[0]))
    return ids


def sightings_of_rounds(db: sqlite3.Connection, round_ids: Sequence[int]) -> set[int]:
    """The sightings the observations of these rounds count for (at most :data:`CHUNK` rounds)."""
    if len(round_ids) > CHUNK:
        raise ValueError(f"at most {CHUNK} rounds at a time")
    marks = ",".join("?" * len(round_ids))
    return {int(r[0]) for r in db.execute(
        f"SELECT DISTINCT sighting_id FROM observations WHERE round_id IN ({marks}) AND sighting_id IS NOT NULL",
        tuple(round_ids))}


def recount(db: sqlite3.Connection, sighting_ids: Iterable[int]) -> None:
    """Set each sighting's first and last ``observed_at`` from the observations that remain, or delete it.

    In the caller's transaction, after the deletes.  Three statements a sighting, each an index lookup.
    """
    for sid in sighting_ids:
        first = db.execute("SELECT min(observed_at) FROM observations WHERE sighting_id = ?", (sid,)).fetchone()[0]
        if first is None:
            db.execute("DELETE FROM sightings WHERE id = ?", (sid,))
            continue
        last = db.execute("SELECT max(observed_at) FROM observations WHERE sighting_id = ?", (sid,)).fetchone()[0]
        db.execute("UPDATE sightings SET first_seen = ?, last_seen = ? WHERE id = ?", (int(first), int(last), sid))


def read(db: sqlite3.Connection, target: Target, limit: int) -> tuple[KeySighting, ...]:
    """The target's key history: at most ``limit`` keys, newest ``last_seen`` first (ties by SPKI hash)."""
    # Keyed by SNI too: a key served for another name on the same address must
    # never enter this name's history (anyone can ask a notary to probe any SNI).
    rows = db.execute(
        "SELECT spki_sha256, first_seen, last_seen FROM sightings WHERE host = ? AND port = ? AND sni = ?"
        " ORDER BY last_seen DESC, spki_sha256 LIMIT ?",
        (target.host, target.port, target.sni or "", limit),
    ).fetchall()
    return tuple(KeySighting(r[0], int(r[1]), int(r[2])) for r in rows)
