"""The Oblivious HTTP gateway's keys on disk (see :mod:`notary.ohttp_gateway` for the routes).

Keys live in ``<data-dir>/ohttp-gateway.keys`` (JSON, mode 0600, created
exclusively, refused when group- or world-accessible, never logged)::

    {"version": 1, "previous": KEY|null, "current": KEY, "next": KEY}
    KEY = {"key_id": 0..255, "private_key": base64 X25519 secret}

``current`` and ``next`` are listed (in the identity document and at the
well-known URL); ``previous`` is still accepted but no longer listed, so that
clients holding a configuration fetched before a rotation keep working.
:func:`rotate_gateway_keys` (``parallax ohttp-rotate``) shifts next -> current
-> previous and makes a fresh next; a running notary picks the new file up
on its next request (the file's inode and mtime are checked), no restart
needed.  A ``ohttp-gateway.keys.*.tmp`` file a crash left mid-write (private
keys, 0600) is deleted by the next rotation or key creation once it is a minute
old.  Rotations take ``<data-dir>/ohttp-gateway.keys.lock`` (not the
data-dir lock ``serve`` holds: rotating under a running notary is the point),
and every write is a complete file put in place by ``rename``/``link``, so a
notary reading it mid-rotation sees the old keys or the new, never a torn file.
A missing key file is created on first use, after ``serve`` has bound its
listener.  Rotate
no more often than clients re-fetch identities (10 minutes), e.g. daily.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from notary.core import ohttp
from notary.errors import KeyFileError

__all__ = ["GATEWAY_KEYS_FILE", "GatewayKeyring", "STALE_TMP_SECONDS", "load_gateway_keys", "rotate_gateway_keys"]

GATEWAY_KEYS_FILE = "ohttp-gateway.keys"


@dataclass(frozen=True)
class GatewayKeyring:
    """The gateway keys: ``current`` and ``next`` listed, ``previous`` only accepted."""

    current: ohttp.GatewayKey
    next: ohttp.GatewayKey
    previous: ohttp.GatewayKey | None = None

    @property
    def listed(self) -> tuple[ohttp.KeyConfig, ...]:
        return (self.current.config, self.next.config)

    @property
    def accepted(self) -> dict[int, ohttp.GatewayKey]:
        keys = [k for k in (self.previous, self.next, self.current) if k is not None]
        return {k.config.key_id: k for k in keys}  # current wins a (theoretical) id clash

    def keys_bytes(self) -> bytes:
        """``application/ohttp-keys``: current, then next."""
        return ohttp.encode_keys(self.listed)

    def keys_b64(self) -> str:
        """What the identity document's ``ohttp_keys`` holds."""
        return base64.b64encode(self.keys_bytes()).decode("ascii")

    def __repr__(self) -> str:
        ids = [k.config.key_id if k else None for k in (self.previous, self.current, self.next)]
        return f"GatewayKeyring(previous, current, next = {ids})"


def _key_json(k: ohttp.GatewayKey | None) -> dict[str, Any] | None:
    if k is None:
        return None
    return {"key_id": k.config.key_id, "private_key": base64.b64encode(k.private_key).decode("ascii")}


def _key_from(d: Any, path: Path) -> ohttp.GatewayKey:
    try:
        key_id, raw = d["key_id"], base64.b64decode(d["private_key"], validate=True)
        if not isinstance(key_id, int) or not 0 <= key_id <= 255 or len(raw) != 32:
            raise ValueError
        return ohttp.GatewayKey.generate(key_id, raw)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise KeyFileError(f"{path} is not a Parallax gateway key file") from None


def _write(path: Path, ring: GatewayKeyring, *, exclusive: bool) -> None:
    """Write the whole file to a private temporary name, then put it in place atomically.

    ``exclusive``: only if ``path`` does not exist yet (``os.link``, which refuses an
    existing name); else ``os.replace``.  Either way a reader sees the old file or the
    complete new one, never a partial write.
    """
    body = json.dumps({"version": 1, "previous": _key_json(ring.previous), "current": _key_json(ring.current),
                       "next": _key_json(ring.next)}).encode() + b"\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists") from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


#: A temporary key file older than this (seconds) is left over from a crash, not being written.
STALE_TMP_SECONDS = 60.0


def _remove_stale_tmp(path: Path, now: float) -> int:
    """Delete ``<keys>.*.tmp`` files (private keys, 0600) a crash left behind mid-write: only
    those last modified ``STALE_TMP_SECONDS`` or more before ``now``, so a write in progress in
    another process keeps its file.  Returns how many were removed."""
    removed = 0
    for tmp in path.parent.glob(path.name + ".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(tmp.lstat().st_mode) and now - tmp.lstat().st_mtime >= STALE_TMP_SECONDS:
                tmp.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def _rotation_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``<keys>.lock``: one rotation at a time (``serve`` never takes it:
    it only reads, and an atomic replace never shows it a partial file)."""
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot open {lock}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise KeyFileError(f"another ohttp-rotate holds {lock}; try again") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # drops the lock


def _read(path: Path) -> GatewayKeyring:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; gateway keys must not be group- or "
                           f"world-accessible (chmod 600 {path})")
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, OSError):
        raise KeyFileError(f"{path} is not a Parallax gateway key file") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise KeyFileError(f"{path} is not a Parallax gateway key file")
    prev = doc.get("previous")
    return GatewayKeyring(_key_from(doc.get("current"), path), _key_from(doc.get("next"), path),
                          _key_from(prev, path) if prev is not None else None)


def _fresh_id(used: set[int], after: int) -> int:
    for step in range(1, 257):
        cand = (after + step) % 256
        if cand not in used:
            return cand
    raise KeyFileError("no free gateway key id")  # pragma: no cover - at most three are used


def load_gateway_keys(data_dir: str | Path, *, create: bool = True) -> GatewayKeyring:
    """Load ``<data_dir>/ohttp-gateway.keys``, creating it (current id 0, next id 1) if absent."""
    path = Path(data_dir) / GATEWAY_KEYS_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        if not create:
            raise KeyFileError(f"no gateway keys at {path}") from None
    _remove_stale_tmp(path, time.time())
    ring = GatewayKeyring(ohttp.GatewayKey.generate(0), ohttp.GatewayKey.generate(1))
    try:
        _write(path, ring, exclusive=True)
    except KeyFileError:
        if not path.exists():
            raise
        return _read(path)  # another process created it first
    return ring


def rotate_gateway_keys(data_dir: str | Path, *, lock_timeout: float = 10.0) -> GatewayKeyring:
    """next -> current -> previous, plus a fresh next; written atomically (0600).

    Safe beside a running ``serve`` (which picks the new file up) and beside another
    rotation: the read-modify-write runs under ``<keys>.lock`` (waiting at most
    ``lock_timeout`` seconds), so two rotations shift the keys twice, never lose one.
    """
    path = Path(data_dir) / GATEWAY_KEYS_FILE
    if not path.exists():
        raise KeyFileError(f"no gateway keys at {path}; start the notary once to create them")
    with _rotation_lock(path, lock_timeout):
        _remove_stale_tmp(path, time.time())
        try:
            old = _read(path)
        except FileNotFoundError:
            raise KeyFileError(f"no gateway keys at {path}; start the notary once to create them") from None
        used = {old.current.config.key_id, old.next.config.key_id}
        ring = GatewayKeyring(old.next, ohttp.GatewayKey.generate(_fresh_id(used, old.next.config.key_id)),
                              old.current)
        _write(path, ring, exclusive=False)
    return ring


class _Keys:
    """The keyring of a running gateway, re-read when the file changes (rotation).

    An existing file is read (and checked) when the app is built, so a bad one stops
    ``serve`` at once; a missing one is created on first use, i.e. once the listener is
    bound and a request has arrived: a ``serve`` that cannot bind writes nothing.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / GATEWAY_KEYS_FILE
        self.ring: GatewayKeyring | None = None
        self.stamp: tuple[int, int] | None = None
        if self.path.exists():
            self.get()

    def _stamp(self) -> tuple[int, int] | None:
        # (inode, mtime): a rotation replaces the file, so the inode changes even within one mtime tick.
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def get(self) -> GatewayKeyring:
        stamp = self._stamp()
        if stamp is None:  # absent: create it on first use; once running, keep the keys in memory
            if self.ring is None:
                self.ring = load_gateway_keys(self.data_dir)
                self.stamp = self._stamp()
            return self.ring
        if self.ring is None or stamp != self.stamp:
            self.ring = _read(self.path)
            self.stamp = stamp
        return self.ring
