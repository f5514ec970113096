"""One write transaction on a store connection (``sqlite3`` in autocommit mode, ``isolation_level=None``).

Every writer of the observation store (a commit of observations, a retention
step, a schema migration) goes through :func:`write_transaction`, so each ends
the same way on failure: rolled back, with SQLite's own error raised.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Iterator

__all__ = ["write_transaction"]


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (the write lock at once, waiting up to the connection's busy
    timeout), ``COMMIT`` when the block ends, ``ROLLBACK`` when it raises.

    SQLite ends a transaction itself on some errors, a full disk among them; a
    ``ROLLBACK`` then would fail with "no transaction is active" and hide the
    cause, so it is sent only while a transaction is still open.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
