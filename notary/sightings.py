"""Key history, kept as a table of sightings so reading it costs the same at any store age.

A target's key history (protocol.md 6.4) is, for each distinct SPKI hash in its
``ok`` observations (same host, port and SNI, any address), the first and last
``observed_at``.  Computed from the observations, that is a scan of every round
the target ever had: about 18 ms on this machine for a target probed every 5
minutes for the default 90 days of retention, on the one store thread, for
every cold probe (``bench/store_history.py``).

The ``sightings`` table (schema version 4, :mod:`notary.migrations`) holds that
answer, one row per (host, port, SNI, SPKI).  It is exact, not an estimate:

* :func:`record` runs in the transaction that stores the observations: a later
  sighting only widens ``first_seen``/``last_seen``;
* :func:`recount` runs in the transaction that deletes rounds (retention): each
  key whose observations lost rows gets its first and last sighting again from
  the rows that remain, by the partial index ``observations_key_seen`` (two index
  lookups a key), or loses its row when none remains;
* :func:`read` takes the newest ``limit`` rows by ``last_seen`` from the index
  ``sightings_recent``: a key-rotating server with thousands of keys costs
  ``limit`` rows, not thousands.

``tests/test_sightings.py`` checks the table against the scan it replaces.
"""

from __future__ import annotations

import sqlite3
from typing import Iterable, Sequence

from notary.core import KeySighting, ProbeResult, Target

__all__ = ["Key", "record", "recount", "read", "keys_of_rounds", "SCAN"]

#: The key history computed from the observations themselves (what the table must equal);
#: used to fill the table when a store migrates to version 4, and by the tests.
SCAN = (
    "SELECT host, port, sni, spki_sha256, min(observed_at), max(observed_at) FROM observations"
    " WHERE status = 'ok' GROUP BY host, port, sni, spki_sha256"
)

_UPSERT = (
    "INSERT INTO sightings (host, port, sni, spki_sha256, first_seen, last_seen) VALUES (?,?,?,?,?,?)"
    " ON CONFLICT (host, port, sni, spki_sha256) DO UPDATE SET"
    " first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)"
)

Key = tuple[str, int, str, str]  # host, port, SNI ('' for none), SPKI SHA-256 hex


def record(db: sqlite3.Connection, results: Sequence[ProbeResult]) -> None:
    """Count the ``ok`` results of one round (one target) in the sightings.  In the caller's transaction."""
    rows = [(r.target.host, r.target.port, r.target.sni or "", r.spki_sha256, r.observed_at, r.observed_at)
            for r in results if r.status == "ok" and r.spki_sha256]
    if rows:
        db.executemany(_UPSERT, rows)


def keys_of_rounds(db: sqlite3.Connection, round_ids: Sequence[int]) -> set[Key]:
    """The keys the ``ok`` observations of these rounds count for (at most 500 ids a call)."""
    marks = ",".join("?" * len(round_ids))
    return {(str(h), int(p), str(s), str(k)) for h, p, s, k in db.execute(
        f"SELECT host, port, sni, spki_sha256 FROM observations WHERE round_id IN ({marks}) AND status = 'ok'",
        tuple(round_ids))}


def recount(db: sqlite3.Connection, keys: Iterable[Key]) -> None:
    """Set each key's first and last sighting from the observations that remain.  In the caller's transaction."""
    for key in keys:
        first = db.execute(
            "SELECT min(observed_at) FROM observations"
            " WHERE host = ? AND port = ? AND sni = ? AND spki_sha256 = ? AND status = 'ok'", key).fetchone()[0]
        if first is None:
            db.execute("DELETE FROM sightings WHERE host = ? AND port = ? AND sni = ? AND spki_sha256 = ?", key)
            continue
        last = db.execute(
            "SELECT max(observed_at) FROM observations"
            " WHERE host = ? AND port = ? AND sni = ? AND spki_sha256 = ? AND status = 'ok'", key).fetchone()[0]
        db.execute("UPDATE sightings SET first_seen = ?, last_seen = ?"
                   " WHERE host = ? AND port = ? AND sni = ? AND spki_sha256 = ?", (int(first), int(last), *key))


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
