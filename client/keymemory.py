"""The memory of keys seen: a small SQLite file in the user's state directory.

Per host, port and SNI (an SNI of its own, so that a key seen for one name is
never taken as seen for another), it keeps every key (SPKI SHA-256) the client
saw: first and last seen (unix seconds), and how many checks judged it what
(verdict status -> count).  It also keeps the keys the user pinned for a host
(``parallax pins pin``), which must match.

The I/O shell of the TOFU rules in :mod:`client.evidence`: :meth:`KeyStore.memory`
reads a :class:`~client.evidence.KeyMemory` for the verdict engine, and
:meth:`KeyStore.record` writes the judged key afterwards.  Limits: at most
:data:`MAX_KEYS_PER_TARGET` keys per target (the least recently seen go first).
Every ``sqlite3`` error becomes :class:`~notary.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import stat
from pathlib import Path
from typing import Any, Iterator

from notary.core import Target, pin_from_spki_hex
from notary.errors import StoreError
from client.evidence import KeyMemory, KnownKey
from client.state import state_dir

__all__ = ["KeyStore", "MAX_KEYS_PER_TARGET", "default_path"]

MAX_KEYS_PER_TARGET = 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    host TEXT NOT NULL, port INTEGER NOT NULL, sni TEXT NOT NULL, spki TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    PRIMARY KEY (host, port, sni, spki));
CREATE TABLE IF NOT EXISTS judgements (
    host TEXT NOT NULL, port INTEGER NOT NULL, sni TEXT NOT NULL, spki TEXT NOT NULL, status TEXT NOT NULL,
    count INTEGER NOT NULL, last_at INTEGER NOT NULL,
    PRIMARY KEY (host, port, sni, spki, status));
CREATE TABLE IF NOT EXISTS pins (
    host TEXT NOT NULL, port INTEGER NOT NULL, sni TEXT NOT NULL, spki TEXT NOT NULL, added_at INTEGER NOT NULL,
    PRIMARY KEY (host, port, sni, spki));
"""


def default_path() -> Path:
    return state_dir() / "keys.sqlite3"


def _where(target: Target) -> tuple[str, int, str]:
    return target.host, target.port, target.sni or ""


class KeyStore:
    """The key memory at ``path`` (default: ``<state dir>/keys.sqlite3``, created 0600; an existing
    file with group or world bits is set to 0600 when opened)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            # What it holds says which sites this user checks: 0600, also for a file that
            # already exists with group or world bits (made by an older version, or copied).
            if self.path.exists() and stat.S_IMODE(self.path.stat().st_mode) & 0o077:
                self.path.chmod(0o600)
            new = not self.path.exists()
            conn = sqlite3.connect(self.path, timeout=5)
            if new:
                self.path.chmod(0o600)
            try:
                conn.executescript(_SCHEMA)  # idempotent
                with conn:
                    yield conn
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreError(f"key memory {self.path}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"key memory {self.path}: {exc.strerror or exc}") from None

    # -- the verdict engine's side ------------------------------------------------------------
    def memory(self, target: Target) -> KeyMemory:
        """What is remembered for this exact host, port and SNI."""
        with self._db() as conn:
            w = _where(target)
            rows = conn.execute("SELECT spki, first_seen, last_seen FROM keys WHERE host=? AND port=? AND sni=? "
                                "ORDER BY first_seen", w).fetchall()
            judged: dict[str, list[tuple[str, int]]] = {}
            for spki, status, count in conn.execute(
                    "SELECT spki, status, count FROM judgements WHERE host=? AND port=? AND sni=? ORDER BY status", w):
                judged.setdefault(spki, []).append((status, count))
            pinned = tuple(r[0] for r in conn.execute("SELECT spki FROM pins WHERE host=? AND port=? AND sni=?", w))
        keys = tuple(KnownKey(s, f, last, tuple(judged.get(s, ()))) for s, f, last in rows)
        return KeyMemory(keys, pinned)

    def record(self, target: Target, spki: str, status: str, now: int) -> None:
        """Remember that a check at ``now`` saw ``spki`` for ``target`` and judged it ``status``."""
        w = _where(target)
        with self._db() as conn:
            conn.execute("INSERT INTO keys VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET last_seen=max(last_seen, excluded.last_seen)",
                         (*w, spki, now, now))
            conn.execute("INSERT INTO judgements VALUES (?,?,?,?,?,1,?) ON CONFLICT DO UPDATE SET count=count+1, last_at=excluded.last_at",
                         (*w, spki, status, now))
            old = [r[0] for r in conn.execute(
                "SELECT spki FROM keys WHERE host=? AND port=? AND sni=? ORDER BY last_seen DESC LIMIT -1 OFFSET ?",
                (*w, MAX_KEYS_PER_TARGET))]
            for s in old:
                conn.execute("DELETE FROM keys WHERE host=? AND port=? AND sni=? AND spki=?", (*w, s))
                conn.execute("DELETE FROM judgements WHERE host=? AND port=? AND sni=? AND spki=?", (*w, s))

    # -- the pins commands --------------------------------------------------------------------
    def pin(self, target: Target, spki: str, now: int) -> None:
        with self._db() as conn:
            conn.execute("INSERT OR IGNORE INTO pins VALUES (?,?,?,?,?)", (*_where(target), spki, now))

    def targets(self) -> list[dict[str, Any]]:
        """One row per remembered (host, port, SNI): key count, first/last seen, pinned keys."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT host, port, sni, count(*), min(first_seen), max(last_seen) FROM keys GROUP BY host, port, sni "
                "ORDER BY host, port, sni").fetchall()
            pins = {(h, p, s): n for h, p, s, n in conn.execute("SELECT host, port, sni, count(*) FROM pins GROUP BY 1,2,3")}
        out = [{"host": h, "port": p, "sni": s or None, "keys": n, "first_seen": f, "last_seen": last,
                "pinned": pins.pop((h, p, s), 0)} for h, p, s, n, f, last in rows]
        out += [{"host": h, "port": p, "sni": s or None, "keys": 0, "first_seen": None, "last_seen": None, "pinned": n}
                for (h, p, s), n in pins.items()]
        return out

    def show(self, host: str, port: int | None = None) -> list[dict[str, Any]]:
        """Every remembered target of ``host`` (every port unless given) with its keys and pins."""
        return [t for t in self.export()["targets"] if t["host"] == host and (port is None or t["port"] == port)]

    def forget(self, host: str, port: int | None = None) -> int:
        """Forget ``host`` (one port, or all): keys, judgements and pins.  Returns how many keys and pins went."""
        cond, args = ("host=?", (host,)) if port is None else ("host=? AND port=?", (host, port))
        with self._db() as conn:
            n = conn.execute(f"DELETE FROM keys WHERE {cond}", args).rowcount
            conn.execute(f"DELETE FROM judgements WHERE {cond}", args)
            n += conn.execute(f"DELETE FROM pins WHERE {cond}", args).rowcount
        return n

    def export(self) -> dict[str, Any]:
        """Everything, as JSON-ready data (``parallax pins export``)."""
        targets = []
        for t in self.targets():
            mem = self.memory(Target(t["host"], t["port"], t["sni"]))
            targets.append({**t, "keys": [k.to_json() for k in mem.keys], "pinned": [pin_from_spki_hex(p) for p in mem.pinned]})
        return {"format": "parallax-key-memory/1", "targets": targets}
