"""Every notary is an Oblivious HTTP gateway (RFC 9458): keys on disk and two routes.

* ``GET  /.well-known/ohttp-gateway``: the key configurations, as
  ``application/ohttp-keys`` (RFC 9540): the current key, then the next one.
* ``POST /.well-known/ohttp-gateway``: a ``message/ohttp-req`` whose Binary
  HTTP request is ``POST /v1/observe`` or ``GET /v1/notary``; the answer is a
  ``message/ohttp-res``.  The inner request runs through the application's
  own router, middlewares and handlers (one implementation of observe: rate
  limits, validation and signing are the same as for a direct request).
  Decapsulation failures (unknown key id, tampered, truncated, wrong key) are
  a 400 with a JSON reason; an inner error (a bad target, 429) is carried
  encrypted inside the 200 ``message/ohttp-res``, as RFC 9458 section 5.2 says.
  The encapsulated body (at most 64 KiB) must arrive within ``body_timeout``
  seconds (else a 400 ``body_timeout``).  The outer request takes one token
  from its client's bucket (trusted-proxy aware) *before* the body is read or
  decrypted, so garbage costs a flooder tokens (then 429s), not the notary an
  HPKE decryption each.  That token is a deposit: once the message decrypts it
  is given back and the inner request is rate-limited on its own, once, as
  the client of the outer request, whatever the encrypted headers say.  Answers are zero-padded to a power of two of at
  least 8 KiB (:func:`notary.core.bhttp.response_bucket`).

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
from typing import Any, Awaitable, Callable, Iterator

from aiohttp import web

from notary.core import bhttp, ohttp
from notary.errors import InputError, KeyFileError, OhttpError
from notary.httputil import BodyTooLarge, read_request_body

__all__ = [
    "GATEWAY_KEYS_FILE", "GATEWAY_PATH", "GatewayKeyring", "load_gateway_keys", "rotate_gateway_keys",
    "install_gateway", "ALLOWED_INNER",
]

GATEWAY_KEYS_FILE = "ohttp-gateway.keys"
GATEWAY_PATH = "/.well-known/ohttp-gateway"
#: The inner requests a gateway serves: (method, path).
ALLOWED_INNER = frozenset({("POST", "/v1/observe"), ("GET", "/v1/notary")})
MAX_ENCAPSULATED_BYTES = 64 * 1024


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


KEYS = web.AppKey("ohttp_keys", _Keys)


def _no_limit(request: web.Request) -> None:
    return None


def _no_count(result: str) -> None:
    return None


@dataclass(frozen=True)
class _Settings:
    """``body_timeout`` seconds for the encapsulated body; ``client_of`` the rate-limit key of a request;
    ``admit`` takes the outer request's deposit token (raises a 429), ``refund`` gives it back;
    ``count`` is told each decapsulation's result (``decapsulated`` or ``rejected``)."""

    body_timeout: float
    client_of: Callable[[web.Request], str]
    admit: Callable[[web.Request], object] = _no_limit
    refund: Callable[[web.Request], None] = _no_limit
    count: Callable[[str], None] = _no_count


GATEWAY = web.AppKey("ohttp_gateway", _Settings)


def _inner_response(status: int, body: bytes, content_type: str | None, extra: dict[str, str]) -> bytes:
    headers = [("content-type", content_type)] if content_type else []
    headers += [(k.lower(), v) for k, v in extra.items()]
    return bhttp.encode_response(bhttp.Response(status, tuple(headers), body))


def _json_error(status: int, code: str, reason: str) -> bytes:
    return _inner_response(status, json.dumps({"error": code, "reason": reason}).encode(), "application/json", {})


async def _keys(request: web.Request) -> web.Response:
    return web.Response(body=request.app[KEYS].get().keys_bytes(), content_type=ohttp.KEYS_MEDIA_TYPE,
                        headers={"Cache-Control": "max-age=600"})


async def _gateway(request: web.Request) -> web.Response:
    if request.content_type != ohttp.REQUEST_MEDIA_TYPE:
        raise web.HTTPUnsupportedMediaType()
    settings = request.app[GATEWAY]
    # A deposit of one token before any work (reading, decrypting): a flood of garbage is
    # refused with 429s from the client's own bucket, and costs the notary no decryption.
    settings.admit(request)
    template = request.clone()  # must be taken before the body is read
    try:
        raw = await read_request_body(request, limit=MAX_ENCAPSULATED_BYTES, timeout=settings.body_timeout)
    except BodyTooLarge:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_ENCAPSULATED_BYTES,
                                            actual_size=request.content_length or 0) from None
    try:
        plain, ctx = ohttp.decapsulate_request(request.app[KEYS].get().accepted, raw)
    except OhttpError:
        settings.count("rejected")
        raise  # -> 400; the deposit is kept
    settings.count("decapsulated")
    try:
        inner = bhttp.decode_request(plain, max_bytes=MAX_ENCAPSULATED_BYTES)
    except OhttpError as exc:
        answer = _json_error(400, exc.code, str(exc))
    else:
        # The inner request is charged to the client of the OUTER request (its address, or the
        # client a trusted proxy names), never to whatever the encrypted headers claim.  It pays
        # for itself there, so the outer deposit is given back first: one request, charged once.
        settings.refund(request)
        answer = await _dispatch(request.app, template, inner, settings.client_of(request))
    # Padded to a size bucket, so the relay cannot tell sites apart by the answer's length.
    padded = bhttp.pad(answer, bhttp.response_bucket(len(answer)))
    return web.Response(body=ohttp.encapsulate_response(ctx, padded), content_type=ohttp.RESPONSE_MEDIA_TYPE,
                        headers={"Cache-Control": "private, no-store"})


async def _dispatch(app: web.Application, template: web.BaseRequest, inner: bhttp.Request, client: str) -> bytes:
    """Run the inner request through this application (router, middlewares, handler).

    ``client`` is the outer request's rate-limit key: the inner request carries it as its
    remote address (and no forwarding header), so the limiter charges it, once, to that key.
    """
    path = inner.path.split("?", 1)[0]
    if (inner.method, path) not in ALLOWED_INNER:
        return _json_error(404, "not_found", f"a gateway serves only {sorted(p for _, p in ALLOWED_INNER)}")
    headers = {"Content-Length": str(len(inner.content))}
    ctype = inner.header("content-type")
    if ctype:
        headers["Content-Type"] = ctype
    clone = template.clone(method=inner.method, rel_url=inner.path, headers=headers, remote=client)
    clone._read_bytes = inner.content  # the inner body, already decrypted  # noqa: SLF001
    # Application._handle is aiohttp's own entry point for a request: it resolves the
    # route and runs the middlewares, exactly as for a request off the wire.
    handle: Callable[[Any], Awaitable[web.StreamResponse]] = app._handle  # noqa: SLF001
    try:
        resp = await handle(clone)
    except web.HTTPException as exc:  # pragma: no cover - the error middleware answers these
        return _json_error(exc.status, "error", exc.reason)
    except InputError as exc:  # pragma: no cover - likewise
        return _json_error(400, exc.code, str(exc))
    body = resp.body if isinstance(resp, web.Response) else None
    if not isinstance(body, (bytes, bytearray)):
        return _json_error(500, "internal", "internal error")
    keep = {k: v for k, v in resp.headers.items() if k.lower() in ("retry-after",)}
    return _inner_response(resp.status, bytes(body), resp.content_type, keep)


def install_gateway(app: web.Application, data_dir: str | Path, *, body_timeout: float = 10.0,
                    client_of: Callable[[web.Request], str] = lambda r: r.remote or "?",
                    admit: Callable[[web.Request], object] = _no_limit,
                    refund: Callable[[web.Request], None] = _no_limit,
                    count: Callable[[str], None] = _no_count) -> None:
    """Load (or create) the gateway keys and add the two routes; the identity hook reads the keys.

    ``body_timeout``: seconds to receive an encapsulated request (else a 400 ``body_timeout``);
    ``client_of``: the rate-limit key of an outer request (the notary's, trusted-proxy aware);
    ``admit``/``refund``: take (raising a 429 when the bucket is empty) and give back the outer
    request's one-token deposit; ``count``: told ``decapsulated`` or ``rejected`` per message.
    """
    app[KEYS] = _Keys(Path(data_dir))
    app[GATEWAY] = _Settings(body_timeout, client_of, admit, refund, count)
    app.router.add_get(GATEWAY_PATH, _keys)
    app.router.add_post(GATEWAY_PATH, _gateway)


def gateway_keys_b64(app: web.Application) -> str | None:
    """The identity document's ``ohttp_keys`` (None when the gateway is not installed)."""
    keys = app.get(KEYS)
    return keys.get().keys_b64() if keys is not None else None
