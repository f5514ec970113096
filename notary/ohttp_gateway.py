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

Keys live in ``<data-dir>/ohttp-gateway.keys``: their file, rotation and reloading
are :mod:`notary.ohttp_gateway_keys` (whose names this module re-exports).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from notary.core import bhttp, ohttp
from notary.errors import InputError, OhttpError
from notary.httputil import BodyTooLarge, read_request_body
from notary.ohttp_gateway_keys import (
    GATEWAY_KEYS_FILE,
    STALE_TMP_SECONDS as STALE_TMP_SECONDS,
    GatewayKeyring,
    _fresh_id as _fresh_id,
    _key_from as _key_from,
    _key_json as _key_json,
    _Keys as _Keys,
    _read as _read,
    _remove_stale_tmp as _remove_stale_tmp,
    _rotation_lock as _rotation_lock,
    _write as _write,
    load_gateway_keys,
    rotate_gateway_keys,
)

__all__ = [
    "GATEWAY_KEYS_FILE", "GATEWAY_PATH", "GatewayKeyring", "load_gateway_keys", "rotate_gateway_keys",
    "install_gateway", "ALLOWED_INNER",
]

GATEWAY_PATH = "/.well-known/ohttp-gateway"
#: The inner requests a gateway serves: (method, path).
ALLOWED_INNER = frozenset({("POST", "/v1/observe"), ("GET", "/v1/notary")})
MAX_ENCAPSULATED_BYTES = 64 * 1024


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
