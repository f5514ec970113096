"""The notary's HTTP handlers and the one piece of middleware every request passes through.

:func:`answer` does the middleware's work (errors as JSON, never a traceback;
the connection guard's busy state; the request count): for routed requests
through :func:`errors`, and for ``POST /v1/observe`` straight from the protocol
(:data:`notary.serving.DIRECT_ROUTES`, see :func:`observe_post_direct`).
:func:`notary.server.create_app` registers the routes.

Every handler that costs anything takes its rate-limit tokens first
(:mod:`notary.clientkey`); observe answers are built from the cached envelope
text plus one freshness leaf per request (:mod:`notary.core.freshness`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import notary
from notary.answercap import TARGET_OVERHEAD, cap_answer
from notary.appkeys import (
    CLOCK, CONFIG, GUARD, IDENTITY_CACHE, KEY, LIMITER, METRICS, OPENAPI_CACHE, OPS_LIMITER, REGISTRY,
    RELAY_PEER_LIMITER, REQUESTS, SERVICE, URL, WORKER,
)
from notary.clientkey import TooMany, client_of, limiter_for, rate_limit
from notary.config import NotaryConfig
from notary.core import Identity, Target, canonical_decode, sign_identity, validate_nonce
from notary.errors import EncodingError, InputError, ParallaxError
from notary.httputil import BodyTooLarge, read_request_body
from notary.ohttp_gateway import gateway_keys_b64
from notary.openapi import openapi_document
from notary.relay import relay_enabled
from notary.serving import received_body
from notary.service import ObservationService
from notary.signer import SignedRound

__all__ = [
    "answer", "errors", "expect_continue", "identity", "observe_post", "observe_post_direct", "observe_get", "healthz", "metrics",
    "openapi",
]

log = logging.getLogger("parallax.notary")


def _error(status: int, code: str, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    # The only middleware (each one is a coroutine layer on every request); see answer.
    refused = request.get(_REFUSED)
    if refused is None:
        return await answer(request.app, request, handler, None)

    async def refuse(_: web.Request) -> web.StreamResponse:
        raise refused
    resp = await answer(request.app, request, refuse, None)
    resp.force_close()  # the body was never asked for: the connection is not reused
    return resp


#: Where :func:`expect_continue` leaves the refusal that :func:`errors` answers with: a
#: ``web.RequestKey`` where aiohttp has them (3.14 warns about a plain string key), else the string.
_REFUSED: Any = getattr(web, "RequestKey", lambda name, _type: name)("parallax.expect_refused", Exception)


async def expect_continue(request: web.Request) -> None:
    """``Expect: 100-continue`` on ``POST /v1/observe``: the 100 only for a body that will be read.

    A declared body over ``max_body_bytes`` (413), or a client without a token left
    (429 with ``Retry-After``, charged as any refused request is), is answered at once
    and without the 100, so the body is never sent; the answer is the usual error JSON,
    counted, with the usual 429 hold (:func:`errors` raises the refusal inside
    :func:`answer`).  Any other expectation is a JSON 417.  (Under
    :func:`notary.serving.serve_app` an unknown expectation never gets here: it is ignored.)
    """
    if request.version < aiohttp.HttpVersion11:
        return  # HTTP/1.0 has no 100 Continue
    if request.headers.get(aiohttp.hdrs.EXPECT, "").lower() != "100-continue":
        request[_REFUSED] = web.HTTPExpectationFailed()
        return
    cfg = request.app[CONFIG]
    length = request.content_length
    if length is not None and length > cfg.max_body_bytes:
        request[_REFUSED] = _too_large(cfg, request)
        return
    client = client_of(request, cfg)
    limiter = limiter_for(request, client, LIMITER)
    if limiter.check(client, time.monotonic(), 1) > 0:
        try:
            rate_limit(request, 1)  # refused: charged and answered as without the header
        except TooMany as exc:
            request[_REFUSED] = exc
            return
    else:
        limiter.refund(client, 1)  # only a look: the handler takes one token per target
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the 100 is not part of the answer's size (as aiohttp's own handler)


async def answer(app: web.Application, request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]], route: str | None) -> web.StreamResponse:
    """Run ``handler``: errors as JSON, the connection guard's busy state, and the request count.

    Every request passes here: routed ones through the :func:`errors` middleware
    (``route`` None: counted under the matched resource), and ``POST /v1/observe``
    also directly from the protocol (:data:`notary.serving.DIRECT_ROUTES`, ``route`` given).
    """
    code = 500
    guard = app[GUARD]
    protocol = request.protocol
    guard.request_started(protocol)
    try:
        resp = await handler(request)
        code = resp.status
        return resp
    except InputError as exc:
        code = 400
        resp = _error(400, exc.code, str(exc))
        if exc.code in ("bad_encoding", "body_timeout"):
            resp.force_close()  # the rest of the body is unreadable: do not linger over it
        return resp
    except web.HTTPException as exc:
        code = exc.status
        if exc.status < 400:
            raise
        if isinstance(exc, TooMany) and exc.delay > 0:
            # Hold a 429 a moment: a client over its rate gets its answers at most this fast
            # per connection, so flooding costs the notary little (connections are capped too).
            await asyncio.sleep(exc.delay)
        if exc.status == 413:
            return _error(413, "body_too_large", f"request body larger than {app[CONFIG].max_body_bytes} bytes")
        # Keep only the headers that carry meaning (Allow on 405, Retry-After on 429);
        # the exception's own Content-Type would clash with the JSON body.
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, headers=keep or None)
    except asyncio.CancelledError:
        raise
    except ParallaxError as exc:
        log.error("request failed: %s", exc)
        return _error(503, "unavailable", "the notary could not complete the request")
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        code = 499  # the client went away: nothing to log; the answer is never sent
        resp = _error(400, "client_gone", "the client disconnected")
        resp.force_close()
        return resp
    except Exception:  # never a traceback to the client
        log.exception("unexpected error")
        return _error(500, "internal", "internal error")
    finally:
        guard.request_finished(protocol)
        if route is None:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
        app[REQUESTS].count(route, code)


@functools.lru_cache(maxsize=4096)
def _target_json(target: Target) -> str:
    return json.dumps(target.to_json(), separators=(",", ":"))


def _clock(app: web.Application) -> int:
    return int(app[CLOCK]())  # type: ignore[operator]


async def identity(request: web.Request) -> web.Response:
    rate_limit(request, 1)
    app = request.app
    cfg, key = app[CONFIG], app[KEY]
    now = _clock(app)
    cached = app[IDENTITY_CACHE]
    if cached and cached[0] == now:  # signed at most once per second
        return web.json_response(cached[1])
    ident = Identity(
        name=cfg.name, region=cfg.region, key_id=key.key_id, public_key=key.verify_key.b64,
        software=f"parallax-notary/{notary.__version__}", signed_at=now, url=app[URL][0],
        country=cfg.country, rir=cfg.rir, lat_e6=cfg.lat_e6, lon_e6=cfg.lon_e6,
        limits=cfg.limits_document(), ohttp_keys=gateway_keys_b64(app), relay=relay_enabled(app),
    )
    envelope = sign_identity(ident, key)
    cached[:] = [now, envelope]
    return web.json_response(envelope)


def _parse_max_age(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 86400 * 365:
        raise InputError("max_age must be an integer number of seconds (0 to one year)", "bad_max_age")
    return value


def _target(host: Any, port: Any, sni: Any) -> Target:
    # str.isdigit() accepts digits such as "²" that int() rejects; refuse them here
    # so that they are a 400, not an unexpected ValueError (500).
    if isinstance(port, str) and not port.isascii():
        raise InputError("port must be an integer", "bad_port")
    return Target.parse(host, port, sni)


def _parse_bool(value: Any, name: str) -> bool:
    if value in (None, False, "0", "false", ""):
        return False
    if value in (True, "1", "true"):
        return True
    raise InputError(f"{name} must be a boolean", f"bad_{name}")


async def _observe_many(app: web.Application, request: web.Request, client: str, targets: list[Target], nonce: str,
                        max_age: int | None, all_addresses: bool) -> web.Response:
    """Answer ``targets`` for ``client`` (its rate-limit key; one token per target already taken)."""
    service = app[SERVICE]
    cached = service.cached(targets[0], max_age=max_age, all_addresses=all_addresses) if len(targets) == 1 else None
    if cached is not None:  # the common case: nothing to wait for before the freshness batch
        rounds = [(cached, "cached")]
    elif len(targets) == 1:  # no gather, no extra task
        # One deadline for the whole request: no probe waits for a slot past it (then: ``busy``).
        deadline = asyncio.get_running_loop().time() + service.limits.queue_timeout
        rounds = [await service.round(targets[0], max_age=max_age, all_addresses=all_addresses, client=client,
                                      deadline=deadline)]
    else:
        deadline = asyncio.get_running_loop().time() + service.limits.queue_timeout
        rounds = list(await asyncio.gather(
            *(service.round(t, max_age=max_age, all_addresses=all_addresses, client=client, deadline=deadline)
              for t in targets)
        ))
    # One token per target was taken up front; an answer with several addresses per
    # target costs one token per envelope, so big answers cannot be had at a discount.
    extra = sum([len(r.envelopes) for r, _ in rounds]) - len(targets)
    if extra > 0:
        limiter_for(request, client, LIMITER, app).charge(client, extra)
    # The cap replaces what does not fit before the nonce is bound: the freshness leaf names what is sent.
    rounds = _capped(service, rounds, app[CONFIG].max_answer_bytes)
    # Every leaf is queued in this turn, so one freshness statement covers the whole request.
    freshness = service.freshness
    if len(rounds) == 1:
        texts = [await freshness.submit(nonce, rounds[0][0].digests, rounds[0][1])]
    else:
        texts = await asyncio.gather(*[freshness.submit(nonce, r.digests, source) for r, source in rounds])
    # Spliced JSON: the cached envelopes' text is reused, not encoded again per request
    # (all of it ASCII: json.dumps escapes the rest).
    if len(texts) == 1:  # one string built, one copy to bytes
        body = (f'{{"results":[{{"target":{_target_json(targets[0])},"envelopes":{rounds[0][0].envelopes_json},'
                f'"freshness":{texts[0]}}}]}}')
    else:
        body = '{"results":[' + ",".join([
            '{"target":' + _target_json(t) + ',"envelopes":' + r.envelopes_json + ',"freshness":' + text + "}"
            for t, (r, _), text in zip(targets, rounds, texts)
        ]) + "]}"
    return web.Response(body=body.encode("ascii"), headers=_JSON_HEADERS)


#: Response headers of an observe answer (a shared read-only mapping: aiohttp copies it).
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def _capped(service: ObservationService, rounds: list[tuple[SignedRound, str]],
            max_bytes: int) -> list[tuple[SignedRound, str]]:
    """``rounds`` with the envelopes that would overflow ``max_bytes`` replaced (see :mod:`notary.answercap`)."""
    # The common case costs one addition per target: each round's envelope list was serialised once.
    if sum([len(r.envelopes_json) for r, _ in rounds]) + TARGET_OVERHEAD * len(rounds) <= max_bytes:
        return rounds
    made: dict[int, str] = {}

    def replace(t: dict[str, Any], ip: str | None, detail: str) -> dict[str, Any]:
        envelope, digest = service.sign_error(Target(t["host"], t["port"], t["sni"]), ip, "answer_too_large", detail)
        made[id(envelope)] = digest
        return envelope

    capped, replaced = cap_answer([r.envelopes for r, _ in rounds], max_bytes, replace)
    if not replaced:
        return rounds
    out = []
    for (signed, source), envelopes in zip(rounds, capped):
        digest_of = {id(e): d for e, d in zip(signed.envelopes, signed.digests)}
        digests = [made.get(id(e)) or digest_of[id(e)] for e in envelopes]
        out.append((SignedRound(signed.results, envelopes, digests), source))
    return out


_OBSERVE_FIELDS = frozenset({"targets", "nonce", "max_age", "all_addresses"})
_TARGET_FIELDS = frozenset({"host", "port", "sni"})


async def observe_post(request: web.Request) -> web.Response:
    return await _observe_post_in(request.app, request)


def observe_post_direct(app: web.Application, request: web.Request) -> Awaitable[web.Response]:
    """:func:`_observe_post` for a request straight from the protocol (``DIRECT_ROUTES``).

    A body that came whole with the head (the common case) is taken without awaiting,
    and the request is checked without a coroutine of its own; the rest is the same.
    """
    cfg = app[CONFIG]
    try:
        raw = received_body(request, cfg.max_body_bytes)
    except BodyTooLarge:
        raise _too_large(cfg, request) from None
    if raw is None:
        return _observe_post_in(app, request)
    return _observe_body(app, request, raw)


def _too_large(cfg: NotaryConfig, request: web.Request) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(max_size=cfg.max_body_bytes, actual_size=request.content_length or 0)


async def _observe_post_in(app: web.Application, request: web.Request) -> web.Response:
    cfg = app[CONFIG]
    try:
        raw = await read_request_body(request, limit=cfg.max_body_bytes, timeout=cfg.body_timeout)
    except BodyTooLarge:
        raise _too_large(cfg, request) from None
    return await _observe_body(app, request, raw)


def _observe_body(app: web.Application, request: web.Request, raw: bytes) -> Awaitable[web.Response]:
    """Check an observe request's body and take its tokens (raising at once); then the answer to await."""
    cfg = app[CONFIG]
    try:
        body = canonical_decode(raw, max_bytes=cfg.max_body_bytes)
    except EncodingError as exc:
        raise InputError(f"request body is not valid JSON: {exc}", "bad_json") from None
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object", "bad_json")
    if not _OBSERVE_FIELDS.issuperset(body):
        unknown = set(body) - _OBSERVE_FIELDS
        raise InputError(f"unknown fields: {', '.join(sorted(unknown))}", "bad_json")
    nonce = validate_nonce(body.get("nonce"))
    raw_targets = body.get("targets")
    if not isinstance(raw_targets, list) or not raw_targets:
        raise InputError("targets must be a non-empty list", "bad_targets")
    if len(raw_targets) > cfg.max_targets:
        raise InputError(f"at most {cfg.max_targets} targets per request", "too_many_targets")
    targets = []
    for item in raw_targets:
        if not isinstance(item, dict) or not _TARGET_FIELDS.issuperset(item):
            raise InputError("each target is {host, port, sni?}", "bad_targets")
        targets.append(_target(item.get("host"), item.get("port", 443), item.get("sni")))
    client = rate_limit(request, len(targets), LIMITER, app)
    return _observe_many(
        app, request, client, targets, nonce, _parse_max_age(body.get("max_age")),
        _parse_bool(body.get("all_addresses"), "all_addresses"),
    )


async def observe_get(request: web.Request) -> web.Response:
    q = request.query
    target = _target(request.match_info["host"], request.match_info["port"], q.get("sni"))
    nonce = validate_nonce(q.get("nonce"))
    client = rate_limit(request, 1)
    return await _observe_many(
        request.app, request, client, [target], nonce, _parse_max_age(q.get("max_age")),
        _parse_bool(q.get("all_addresses"), "all_addresses"),
    )


async def healthz(request: web.Request) -> web.Response:
    doc: dict[str, Any] = {"status": "ok", "key_id": request.app[KEY].key_id}
    worker = request.app.get(WORKER)
    if worker is not None:
        doc["worker"] = worker
    return web.json_response(doc)


async def metrics(request: web.Request) -> web.Response:
    rate_limit(request, 1, OPS_LIMITER)
    metrics, guard, service = request.app[METRICS], request.app[GUARD], request.app[SERVICE]
    metrics["inflight"].set(service.inflight)
    metrics["queued"].set(service.scheduler.queued)
    metrics["connections"].set(guard.open)
    for kind, n in guard.refused.items():
        metrics["conn_events"].labels(event=f"refused_{kind}").set(n)
    for kind, n in guard.closed.items():
        metrics["conn_events"].labels(event=f"closed_{kind}").set(n)
    metrics["conn_events"].labels(event="evicted").set(guard.evicted)
    metrics["freshness"].labels(kind="statements").set(service.freshness.statements)
    metrics["freshness"].labels(kind="leaves").set(service.freshness.leaves)
    metrics["rate_overflow"].set(request.app[LIMITER].overflowed + request.app[RELAY_PEER_LIMITER].overflowed)
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    rate_limit(request, 1, OPS_LIMITER)
    cached = request.app[OPENAPI_CACHE]
    if not cached:  # the document depends only on the configuration: build it once
        cached.append(json.dumps(openapi_document(request.app[CONFIG], relay=relay_enabled(request.app))).encode())
    return web.Response(body=cached[0], content_type="application/json")
