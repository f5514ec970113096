"""The notary HTTP server (aiohttp).  Build it with :func:`create_app`; run it with :func:`run`.

Endpoints (all JSON; errors are ``{"error": code, "reason": text}``):

* ``GET  /v1/notary``            the signed identity document (a DSSE envelope)
* ``POST /v1/observe``           ``{"targets": [{"host", "port", "sni"?}], "nonce", "max_age"?, "all_addresses"?}``
                                  -> ``{"results": [{"target", "envelopes": [...], "freshness": {...}}]}``, request order
* ``GET  /v1/observe/{host}/{port}?nonce=...[&sni=&max_age=&all_addresses=1]``  the same for one target
* ``GET  /healthz``, ``GET /metrics`` (Prometheus text), ``GET /v1/openapi.json``

Under :func:`notary.serving.serve_app` (``parallax serve``), ``POST /v1/observe``
with exactly that request target is handed to its handler straight from the
protocol (``DIRECT_ROUTES``: no router, no middleware layers); :func:`_answer`
does the middleware's work for it, so every answer, error and count is the same.

Limits: at most ``max_targets`` targets a request, ``max_body_bytes`` a body, a
per-client token bucket (429 with ``Retry-After``), global and per-host probe
caps.  Nothing a client sends can produce a traceback or a 500 with details.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import math
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import notary
from notary.answercap import TARGET_OVERHEAD, cap_answer
from notary.config import NotaryConfig
from notary.connguard import ConnectionGuard, raise_fd_limit
from notary.core.addrpolicy import IPAddress, IPNetwork
from notary.core import Identity, SigningKey, Target, canonical_decode, sign_identity, validate_nonce
from notary.errors import EncodingError, InputError, ParallaxError
from notary.httputil import BodyTooLarge, read_request_body
from notary.ohttp_gateway import gateway_keys_b64, install_gateway
from notary.openapi import openapi_document
from notary.prober import Prober, Resolver
from notary.ratelimit import RateLimiter
from notary.relay import RelayConfig, install_relay, relay_enabled
from notary.serving import DIRECT_ROUTES, DIRECT_STANDS_FOR, received_body, serve_app
from notary.service import ObservationService
from notary.signer import SignedRound
from notary.store import SQLiteStore, Store

__all__ = ["create_app", "run", "client_key", "CONFIG", "KEY", "SERVICE", "STORE", "WORKER", "GUARD"]

log = logging.getLogger("parallax.notary")

CONFIG = web.AppKey("config", NotaryConfig)
KEY = web.AppKey("key", SigningKey)
STORE = web.AppKey("store", SQLiteStore)
SERVICE = web.AppKey("service", ObservationService)
LIMITER = web.AppKey("limiter", RateLimiter)
METRICS = web.AppKey("metrics", dict)
REGISTRY = web.AppKey("registry", CollectorRegistry)
CLOCK = web.AppKey("clock", object)
IDENTITY_CACHE = web.AppKey("identity_cache", list)
GUARD = web.AppKey("guard", ConnectionGuard)
#: A second bucket per client, same rate and burst, for /metrics and /v1/openapi.json: limited,
#: but reading them never spends (or waits on) a client's observation budget.
OPS_LIMITER = web.AppKey("ops_limiter", RateLimiter)
#: The observation buckets of ``--relay-peer`` relays: ``relay_peer_factor`` times the rate and burst.
RELAY_PEER_LIMITER = web.AppKey("relay_peer_limiter", RateLimiter)
#: The OpenAPI document's bytes, built on first request.
OPENAPI_CACHE = web.AppKey("openapi_cache", list)
#: The URL the identity document names: ``[config.url]``, or filled from the bound address (see :func:`run`).
URL = web.AppKey("url", list)


def listen_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` for a listening address (IPv6 in brackets)."""
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"
#: Set by :mod:`notary.workers` in each worker process (``--workers N``): its index, shown by /healthz.
WORKER = web.AppKey("worker", int)


def _error(status: int, code: str, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    # The only middleware (each one is a coroutine layer on every request); see _answer.
    return await _answer(request.app, request, handler, None)


async def _answer(app: web.Application, request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]], route: str | None) -> web.StreamResponse:
    """Run ``handler``: errors as JSON, the connection guard's busy state, and the request count.

    Every request passes here: routed ones through the :func:`_errors` middleware
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
        if isinstance(exc, _TooMany) and exc.delay > 0:
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


class RequestCounts:
    """``parallax_http_requests_total`` by route and status code.

    Plain integers on the request path (a prometheus ``Counter`` child takes a
    lock on every increment); exported as a counter family when /metrics is read.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}

    def count(self, route: str, code: int) -> None:
        key = (route, code)
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("parallax_http_requests", "HTTP requests by route and status code",
                                     labels=["route", "code"])
        for (route, code), n in sorted(self.counts.items()):
            family.add_metric([route, str(code)], n)
        yield family


REQUESTS = web.AppKey("requests", RequestCounts)


@functools.lru_cache(maxsize=4096)
def _target_json(target: Target) -> str:
    return json.dumps(target.to_json(), separators=(",", ":"))


def _probe_counter(metrics: dict[str, Any], status: str) -> Any:
    """The ``parallax_probes`` child for ``status``, looked up once (``labels()`` is slow)."""
    children = metrics.setdefault("_probe_children", {})
    child = children.get(status)
    if child is None:
        child = children[status] = metrics["probes"].labels(status=status)
    return child


def _clock(app: web.Application) -> int:
    return int(app[CLOCK]())  # type: ignore[operator]


def client_key(peer: str | None, forwarded: list[str], trusted: tuple[IPNetwork, ...]) -> str:
    """The rate-limit key of a request.

    Behind a trusted reverse proxy (``--trusted-proxy CIDR``) the client is the
    rightmost ``X-Forwarded-For`` hop that is not itself a trusted proxy.  IPv6
    clients are keyed by their /64, which one subscriber usually holds whole.
    """
    def parse(text: str) -> IPAddress | None:
        try:
            return ipaddress.ip_address(text.strip().strip("[]"))
        except ValueError:
            return None

    def is_trusted(addr: IPAddress | None) -> bool:
        return addr is not None and any(addr.version == n.version and addr in n for n in trusted)

    addr = parse(peer or "")
    if is_trusted(addr):
        hops = [h for value in forwarded for h in value.split(",") if h.strip()]
        for hop in reversed(hops):
            addr = parse(hop)
            if not is_trusted(addr):
                break
    if addr is None:
        return peer or "?"
    if addr.version == 6 and addr.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr.ipv4_mapped or addr) if addr.version == 6 else str(addr)


@functools.lru_cache(maxsize=4096)
def _client_key_cached(peer: str | None, forwarded: tuple[str, ...], trusted: tuple[IPNetwork, ...]) -> str:
    return client_key(peer, list(forwarded), trusted)


def _client(request: web.Request, config: NotaryConfig | None = None) -> str:
    """The request's rate-limit key (memoised: the same peer asks again and again)."""
    trusted = (config if config is not None else request.app[CONFIG]).trusted_proxies
    if not trusted:  # no proxy to believe: X-Forwarded-For is ignored (see client_key)
        return _client_key_cached(request.remote, (), ())
    return _client_key_cached(request.remote, tuple(request.headers.getall("X-Forwarded-For", [])), trusted)


@functools.lru_cache(maxsize=4096)
def _in_networks(key: str, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether the rate-limit ``key`` (an address, or an IPv6 /64) lies in one of ``networks``."""
    if not networks:
        return False
    try:
        net = ipaddress.ip_network(key, strict=False)
    except ValueError:
        return False
    return any(net.version == n.version and net.subnet_of(n) for n in networks)  # type: ignore[arg-type]


def _limiter(request: web.Request, client: str, bucket: "web.AppKey[RateLimiter]" = LIMITER,
             app: web.Application | None = None) -> RateLimiter:
    """The bucket table for ``client``: a relay peer's observation budget is its own, larger one."""
    if app is None:
        app = request.app
    if bucket is LIMITER:
        peers = app[CONFIG].relay_peers
        if peers and _in_networks(client, peers):
            return app[RELAY_PEER_LIMITER]
    return app[bucket]


def _rate_limit(request: web.Request, cost: int, bucket: "web.AppKey[RateLimiter]" = LIMITER,
                app: web.Application | None = None) -> str:
    """Take ``cost`` tokens from the request's client (429 :class:`_TooMany` if it has too few); its key."""
    if app is None:
        app = request.app
    client, now = _client(request, app[CONFIG]), time.monotonic()
    limiter = _limiter(request, client, bucket, app)
    wait = limiter.check(client, now, cost)
    if wait > 0:
        # A refused request is charged too (down to -burst): a client that keeps asking while
        # limited stays limited.  Retry-After is the wait after that charge.  The 429 is held
        # for half that wait (at most rate_limit_delay), never long enough to earn a token back.
        limiter.charge(client, cost)
        wait = limiter.check(client, now, cost)
        raise _TooMany(wait, min(wait / 2, app[CONFIG].rate_limit_delay))
    return client


class _TooMany(web.HTTPTooManyRequests):
    def __init__(self, wait: float, delay: float = 0.0) -> None:
        super().__init__(headers={"Retry-After": str(max(1, math.ceil(wait)))})
        self.delay = delay


async def _identity(request: web.Request) -> web.Response:
    _rate_limit(request, 1)
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
        _limiter(request, client, LIMITER, app).charge(client, extra)
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


async def _observe_post(request: web.Request) -> web.Response:
    return await _observe_post_in(request.app, request)


def _observe_post_direct(app: web.Application, request: web.Request) -> Awaitable[web.Response]:
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
    client = _rate_limit(request, len(targets), LIMITER, app)
    return _observe_many(
        app, request, client, targets, nonce, _parse_max_age(body.get("max_age")),
        _parse_bool(body.get("all_addresses"), "all_addresses"),
    )


async def _observe_get(request: web.Request) -> web.Response:
    q = request.query
    target = _target(request.match_info["host"], request.match_info["port"], q.get("sni"))
    nonce = validate_nonce(q.get("nonce"))
    client = _rate_limit(request, 1)
    return await _observe_many(
        request.app, request, client, [target], nonce, _parse_max_age(q.get("max_age")),
        _parse_bool(q.get("all_addresses"), "all_addresses"),
    )


async def _healthz(request: web.Request) -> web.Response:
    doc: dict[str, Any] = {"status": "ok", "key_id": request.app[KEY].key_id}
    worker = request.app.get(WORKER)
    if worker is not None:
        doc["worker"] = worker
    return web.json_response(doc)


async def _metrics(request: web.Request) -> web.Response:
    _rate_limit(request, 1, OPS_LIMITER)
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


async def _openapi(request: web.Request) -> web.Response:
    _rate_limit(request, 1, OPS_LIMITER)
    cached = request.app[OPENAPI_CACHE]
    if not cached:  # the document depends only on the configuration: build it once
        cached.append(json.dumps(openapi_document(request.app[CONFIG], relay=relay_enabled(request.app))).encode())
    return web.Response(body=cached[0], content_type="application/json")


def _make_metrics(registry: CollectorRegistry) -> dict[str, Any]:
    return {
        "probes": Counter("parallax_probes", "Probes by result status", ["status"], registry=registry),
        "inflight": Gauge("parallax_probes_inflight", "Probes in flight", registry=registry),
        "probe_seconds": Histogram("parallax_probe_seconds", "Probe duration", registry=registry),
        "connections": Gauge("parallax_connections_open", "Client connections open now", registry=registry),
        "conn_events": Gauge("parallax_connection_events", "Connections refused (client, global cap) or closed "
                             "(head, idle deadline) since start", ["event"], registry=registry),
        "freshness": Gauge("parallax_freshness_signed", "Freshness statements signed and leaves (answers) they "
                           "covered since start: leaves / statements is the mean batch size", ["kind"], registry=registry),
        "queued": Gauge("parallax_probes_queued", "Probes waiting for a slot", registry=registry),
        "rate_overflow": Gauge("parallax_rate_limit_overflowed", "Rate-limit checks charged to the shared overflow "
                               "bucket since start: keys not in the bucket table while it was full of draining "
                               "buckets (a key flood)", registry=registry),
        "ohttp": Counter("parallax_ohttp_decapsulations", "Oblivious HTTP messages the gateway tried to decrypt, "
                         "by result (decapsulated, rejected)", ["result"], registry=registry),
    }


def create_app(
    config: NotaryConfig,
    key: SigningKey,
    *,
    clock: Callable[[], int] = lambda: int(time.time()),
    resolver: Resolver | None = None,
    store: Store | None = None,
    relay: RelayConfig | None = None,
) -> web.Application:
    """Build a notary application.  The store opens in a cleanup context (``config.db_path``).

    Every notary is an Oblivious HTTP gateway (:mod:`notary.ohttp_gateway`, keys in
    ``config.data_dir``); with ``relay`` it also relays for a bundle (:mod:`notary.relay`).
    """
    app = web.Application(middlewares=[_errors], client_max_size=config.max_body_bytes)
    registry = CollectorRegistry()
    metrics = _make_metrics(registry)
    app[CONFIG] = config
    app[KEY] = key
    app[CLOCK] = clock
    app[REGISTRY] = registry
    app[METRICS] = metrics
    app[REQUESTS] = RequestCounts()
    registry.register(app[REQUESTS])
    app[LIMITER] = RateLimiter(config.rate_per_client, config.burst_per_client)
    app[OPS_LIMITER] = RateLimiter(config.rate_per_client, config.burst_per_client)
    app[RELAY_PEER_LIMITER] = RateLimiter(config.rate_per_client * config.relay_peer_factor,
                                          config.burst_per_client * config.relay_peer_factor)
    app[IDENTITY_CACHE] = []
    app[URL] = [config.url]
    app[OPENAPI_CACHE] = []
    app[GUARD] = ConnectionGuard(config.conn_limits, trusted=config.trusted_proxies + config.relay_peers)

    async def open_store(app: web.Application) -> AsyncIterator[None]:
        st = store if store is not None else await SQLiteStore.open(config.db_path)
        app[STORE] = st  # type: ignore[misc]
        prober = Prober(
            config.policy, clock=clock, resolver=resolver, limits=config.probe_limits,
            connect_override=config.connect_override,
        )
        app[SERVICE] = ObservationService(
            key, prober, st, clock=clock, limits=config.service_limits,
            on_probe=lambda r: _probe_counter(metrics, r.status).inc(),
            on_duration=metrics["probe_seconds"].observe,
        )
        retention = None
        if config.retention.interval > 0 and hasattr(st, "enforce_retention"):
            retention = asyncio.create_task(_retention_loop(st, config, clock))
        yield
        if retention is not None:
            retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention
        await st.close()

    async def rescan(app: web.Application) -> AsyncIterator[None]:
        task = None
        if config.watch:
            task = asyncio.create_task(_rescan_loop(app[SERVICE], config))
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.extend([open_store, rescan])

    observe = functools.partial(_observe_post_direct, app)

    def observe_direct(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        # The same handler and the same middleware work as the routed POST /v1/observe,
        # without aiohttp's router and middleware layers (see notary.serving.direct_dispatch).
        return _answer(app, request, observe, "/v1/observe")  # type: ignore[arg-type]
    app[DIRECT_ROUTES] = {("POST", "/v1/observe"): observe_direct}
    app[DIRECT_STANDS_FOR] = (_errors,)  # _answer does its work
    app.router.add_get("/v1/notary", _identity)
    app.router.add_post("/v1/observe", _observe_post)
    app.router.add_get("/v1/observe/{host}/{port}", _observe_get)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/openapi.json", _openapi)
    install_gateway(app, config.data_dir, body_timeout=config.body_timeout, client_of=_client,
                    admit=lambda r: _rate_limit(r, 1), refund=lambda r: _limiter(r, _client(r)).refund(_client(r), 1),
                    count=lambda result: metrics["ohttp"].labels(result=result).inc())
    if relay is not None:
        install_relay(app, relay, _client, resolver=resolver)
    return app


async def _retention_loop(store: Any, config: NotaryConfig, clock: Callable[[], int]) -> None:
    """Apply the store's retention limits every ``retention.interval`` seconds, and at once when
    the live size, looked at every ``retention.size_check`` seconds, is over the bound
    (see notary.retention)."""
    limits = config.retention
    tick = min(limits.interval, limits.size_check) if limits.size_check > 0 else limits.interval
    due = 0.0  # monotonic time of the next scheduled pass
    while True:
        try:
            now = time.monotonic()
            over = False
            if now < due and hasattr(store, "live_bytes"):
                over = await store.live_bytes() > limits.max_bytes
            if now >= due or over:
                deleted = await store.enforce_retention(limits, clock())
                due = time.monotonic() + limits.interval
                if any(deleted.values()):
                    log.info("retention: deleted %s%s", deleted, " (over the size bound)" if over else "")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed pass must never end the loop
            log.warning("retention pass failed: %s", exc)
            due = time.monotonic() + limits.interval
        await asyncio.sleep(tick)


async def _rescan_loop(service: ObservationService, config: NotaryConfig) -> None:
    """Re-probe the watch list every ``rescan_interval`` seconds (history without clients)."""
    while True:
        for target in config.watch:
            try:
                await service.fresh(target, all_addresses=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a re-scan failure must never end the loop
                log.warning("re-scan of %s failed: %s", target, exc)
        await asyncio.sleep(config.rescan_interval)


def run(config: NotaryConfig, key: SigningKey, host: str, port: int, *, relay: RelayConfig | None = None,
        access_log: bool = False, on_bound: Callable[[tuple[str, int]], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (the CLI's ``parallax serve``), behind the connection guard.

    No access log by default, so no client address is ever logged; ``access_log``
    (``--access-log``, an operator's explicit opt-in) turns aiohttp's on, which does.
    ``on_bound`` runs once the listener is bound, and only then.  Without ``config.url``
    the identity document names the address actually bound (``--listen 127.0.0.1:0``).
    """
    raise_fd_limit()  # before the guard sizes its connection cap from the limit
    app = create_app(config, key, relay=relay)

    def bound(addr: tuple[str, int]) -> None:
        if config.url is None:
            app[URL][0] = listen_url(host, addr[1])
            app[IDENTITY_CACHE].clear()
        if on_bound is not None:
            on_bound(addr)
    asyncio.run(serve_app(app, host, port, app[GUARD], bound,
                          access_log=logging.getLogger("aiohttp.access") if access_log else None))
