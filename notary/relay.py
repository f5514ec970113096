"""An Oblivious HTTP relay for the notaries of one bundle (``parallax serve --relay``).

Routes (``KEY_ID`` is a bundle entry's Ed25519 key id, e.g. ``ed25519:ab12...``):

* ``POST /v1/relay/KEY_ID``: a ``message/ohttp-req`` body, forwarded unchanged
  to ``<that notary's url>/.well-known/ohttp-gateway``; the gateway's answer
  (``message/ohttp-res``, or its error) comes back unchanged.
* ``GET /v1/relay/KEY_ID/notary``: that notary's signed identity document
  (which lists its gateway keys), fetched for the client so that the gateway
  never sees the client's address.  The client verifies the signature with the
  bundle key, so the relay cannot substitute keys.

What a relay does not do: forward anywhere but the gateways of its bundle
(no open proxy; the URL is never taken from the request); connect to an
address its notary's address policy refuses (private and internal ranges,
unless the operator's ``--allow-network`` opts in); add ``X-Forwarded-For``
or any other header naming the client; read the plaintext (it has no keys);
log, store or count the client's address or the gateway asked (the token
buckets are in memory only, bounded, and keyed like the notary's own).
Limits: request bodies up to ``max_body_bytes`` received within
``body_timeout`` seconds (else a 400 ``body_timeout``), answers up to
``max_response_bytes``, ``timeout`` seconds per forwarded request.

Forwarding.  One aiohttp client session, kept-alive connections (at most
``max_per_gateway`` per gateway: a busy gateway's surplus is a 503 at once),
set up for forwarding and nothing else: no cookie jar, no automatic headers
(the request carries ``Host``, ``Content-Type`` and ``Content-Length``, and no
``User-Agent``), no decompression (an answer with a ``Content-Encoding`` is
refused: a gateway is never asked for one), no redirects followed.  A new
connection goes only to the addresses :class:`PolicyResolver` resolved and
checked.

Fair shares.  A gateway sees every request a relay forwards as coming from the
relay, so all of the relay's clients share one of the gateway's per-client
buckets.  The relay therefore gives each of its clients, per gateway, a
bucket of :data:`RELAY_SHARE` times less (:meth:`RelayConfig.sized_for`: with
the default notary limits, 20/s burst 40 at the gateway, a client gets 2.5/s
burst 5 per gateway), so that no single client can use up the relay's share
at a gateway (docs/protocol.md section 13).  The gateway charges the relay one
token per observation (up to 8 a target with ``all_addresses``); the relay,
which cannot count them, charges a client one token per 4 KiB of the padded
answer (:func:`answer_cost`: the bucket it sees anyway), after the fact.
A gateway whose operator names the relay (``serve --relay-peer CIDR``) gives it
``--relay-peer-factor`` (default :data:`RELAY_SHARE`) times the allowance, so
that many clients at their full share fit (``notary.server``).
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from notary.core import AddressPolicy
from notary.core.ohttp import REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE
from notary.core.target import is_ip_literal
from notary.httputil import BodyTooLarge, read_capped, read_request_body
from notary.prober import Resolver, SystemResolver
from notary.ratelimit import RateLimiter

__all__ = ["RelayConfig", "install_relay", "RELAY_PREFIX", "RELAY_SHARE", "relay_enabled", "answer_cost", "ANSWER_COST_UNIT"]

RELAY_PREFIX = "/v1/relay"
#: A relay client's bucket at a relay is this many times smaller than the gateway's bucket for the relay.
RELAY_SHARE = 8
#: A relayed answer costs its client one token per this many bytes of its padded size bucket.
ANSWER_COST_UNIT = 4096


@dataclass(frozen=True)
class RelayConfig:
    """``gateways`` maps bundle key ids to notary base URLs.  Bytes, seconds, requests per second.

    ``rate_per_client``/``burst_per_client`` is the bucket of one client *per gateway*
    (default: the default notary limits divided by :data:`RELAY_SHARE`).
    """

    gateways: Mapping[str, str]
    policy: AddressPolicy = field(default_factory=AddressPolicy)
    max_body_bytes: int = 64 * 1024
    max_response_bytes: int = 4 << 20
    timeout: float = 15.0
    #: Forwards in flight to one gateway at most; one more is a 503 ``gateway_busy`` at once, so a
    #: gateway that does not answer holds at most this many connections and delays no other gateway.
    max_per_gateway: int = 16
    rate_per_client: float = 20.0 / RELAY_SHARE
    burst_per_client: int = 40 // RELAY_SHARE
    body_timeout: float = 10.0

    @classmethod
    def sized_for(cls, gateways: Mapping[str, str], policy: AddressPolicy, *, gateway_rate: float,
                  gateway_burst: int, body_timeout: float = 10.0) -> "RelayConfig":
        """A relay whose clients each get 1/:data:`RELAY_SHARE` of the gateways' per-client
        limit (``gateway_rate`` per second, ``gateway_burst``), per gateway; burst at least 2
        (an identity fetch and a request)."""
        return cls(gateways, policy, rate_per_client=gateway_rate / RELAY_SHARE,
                   burst_per_client=max(2, gateway_burst // RELAY_SHARE), body_timeout=body_timeout)


class PolicyResolver(AbstractResolver):
    """Resolves a gateway's host and refuses it unless *every* address passes the policy.

    The connection then goes to exactly the addresses checked (no second lookup
    a hostile DNS server could steer inward).
    """

    def __init__(self, policy: AddressPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self.resolver = resolver or SystemResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        ips = [host.strip("[]")] if is_ip_literal(host.strip("[]")) else await self.resolver.resolve(host, port)
        if not ips:
            raise OSError(f"{host} has no address")
        for ip in ips:
            why = self.policy.address_reason(ip)
            if why:
                raise OSError(why)
        return [
            ResolveResult(hostname=host, host=ip, port=port,
                          family=socket.AF_INET6 if ":" in ip else socket.AF_INET, proto=0, flags=socket.AI_NUMERICHOST)
            for ip in ips
        ]

    async def close(self) -> None:
        return None


RELAY = web.AppKey("relay_config", RelayConfig)
RELAY_SESSION = web.AppKey("relay_session", aiohttp.ClientSession)
#: Headers aiohttp would add by itself; a relay sends none of them.
_SKIP_HEADERS = ("User-Agent", "Accept", "Accept-Encoding")
RELAY_LIMITER = web.AppKey("relay_limiter", RateLimiter)


def relay_enabled(app: web.Application) -> bool:
    return app.get(RELAY) is not None


def _json(status: int, code: str, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status, headers=headers)


@dataclass(frozen=True, slots=True)
class _Gateway:
    """One gateway's two forwarding URLs, parsed once; ``refused``: its host is an IP literal the
    policy refuses (aiohttp does not consult the resolver for an IP literal)."""

    post: URL
    identity: URL
    refused: bool


def _parse_gateway(url: str, policy: AddressPolicy) -> _Gateway:
    base = url.rstrip("/")
    host = (urlsplit(base).hostname or "").strip("[]")
    return _Gateway(URL(base + "/.well-known/ohttp-gateway"), URL(base + "/v1/notary"),
                    is_ip_literal(host) and bool(policy.address_reason(host)))


#: Gateways parsed so far, by base URL (the mapping may be filled in after the app is built).
RELAY_GATEWAYS = web.AppKey("relay_gateways", dict[str, _Gateway])
#: Forwards in flight, by gateway (its POST URL); see RelayConfig.max_per_gateway.
RELAY_INFLIGHT = web.AppKey("relay_inflight", dict[URL, int])


def _gateway(request: web.Request) -> _Gateway:
    cfg = request.app[RELAY]
    url = cfg.gateways.get(request.match_info["key_id"])
    if url is None:
        raise web.HTTPNotFound(reason="Unknown Gateway")
    parsed = request.app[RELAY_GATEWAYS]
    gw = parsed.get(url)
    if gw is None:
        if len(parsed) >= 4096:  # bounded, whatever happens to the mapping
            parsed.clear()
        gw = parsed[url] = _parse_gateway(url, cfg.policy)
    return gw


def _bucket_key(request: web.Request, client_of: Callable[[web.Request], str]) -> str:
    # One bucket per (client, gateway): a client's share at each gateway, never the relay's whole.
    return f"{client_of(request)} {request.match_info['key_id']}"


def _limit(request: web.Request, bucket: str) -> web.Response | None:
    wait = request.app[RELAY_LIMITER].check(bucket, time.monotonic())
    if wait > 0:
        return _json(429, "too_many_requests", "Too Many Requests", {"Retry-After": str(max(1, math.ceil(wait)))})
    return None


def answer_cost(encapsulated_bytes: int) -> int:
    """Tokens a relayed answer costs its client: one per :data:`ANSWER_COST_UNIT` (4 KiB) of the
    padded answer, at least 1 (the encapsulation adds under 64 bytes of nonce and tag to the
    padded bucket, so the division gives the bucket in those units): the smallest bucket (8 KiB,
    one or two observations) costs 2, 32 KiB (8 observations of a typical chain) costs 8.

    The gateway charges the relay one token per observation; the relay cannot count them
    (they are encrypted) but sees the padded size bucket, which grows with their number.
    Charging by it tells the relay nothing it did not already see.
    """
    return max(1, encapsulated_bytes // ANSWER_COST_UNIT)


async def _forward(request: web.Request, method: str, gw: _Gateway, body: bytes | None,
                   content_type: str | None, bucket: str | None = None) -> web.Response:
    cfg = request.app[RELAY]
    if gw.refused:  # an IP literal the policy refuses (a host name is checked by PolicyResolver)
        return _json(502, "bad_gateway", "the gateway could not be reached")
    inflight = request.app[RELAY_INFLIGHT]
    held = inflight.get(gw.post, 0)
    if held >= cfg.max_per_gateway:
        return _json(503, "gateway_busy", f"{held} requests to this gateway are in flight already",
                     headers={"Retry-After": "1"})
    inflight[gw.post] = held + 1
    try:
        return await _forward_one(request, cfg, gw, method, body, content_type, bucket)
    finally:
        inflight[gw.post] -= 1


#: What a gateway's answer with a body may be labelled (anything else is a 502: the relay passes no
#: other kind of content, such as HTML, on to its clients).
_ANSWER_TYPES = frozenset({RESPONSE_MEDIA_TYPE, "application/json"})


async def _forward_one(request: web.Request, cfg: RelayConfig, gw: _Gateway, method: str, body: bytes | None,
                       content_type: str | None, bucket: str | None) -> web.Response:
    url = gw.post if body is not None else gw.identity
    headers = {"Content-Type": content_type} if content_type is not None else None
    try:
        async with asyncio.timeout(cfg.timeout):
            async with request.app[RELAY_SESSION].request(method, url, data=body, headers=headers,
                                                          allow_redirects=False) as resp:
                if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                    return _json(502, "bad_gateway", "the gateway's answer is compressed (none was asked for)")
                raw = await read_capped(resp.content, cfg.max_response_bytes)
                ctype = resp.headers.get("Content-Type", "application/octet-stream")
                status = resp.status
    except TimeoutError:
        return _json(504, "gateway_timeout", f"the gateway did not answer within {cfg.timeout:g}s")
    except BodyTooLarge:
        return _json(502, "bad_gateway", f"the gateway's answer is larger than {cfg.max_response_bytes} bytes")
    except (aiohttp.ClientError, OSError):
        return _json(502, "bad_gateway", "the gateway could not be reached")
    if raw and ctype.split(";", 1)[0].strip().lower() not in _ANSWER_TYPES:
        return _json(502, "bad_gateway", "the gateway's answer is neither an OHTTP response nor JSON")
    if bucket is not None and status == 200:
        # One token was taken up front; a larger answer (more observations) costs the rest now.
        request.app[RELAY_LIMITER].charge(bucket, answer_cost(len(raw)) - 1)
    return web.Response(status=status, body=raw, headers={"Content-Type": ctype, "Cache-Control": "private, no-store"})


def _handlers(client_of: Callable[[web.Request], str]) -> tuple[Any, Any]:
    async def relay_post(request: web.Request) -> web.Response:
        gw = _gateway(request)
        if request.content_type != REQUEST_MEDIA_TYPE:
            return _json(415, "unsupported_media_type", f"a relay forwards only {REQUEST_MEDIA_TYPE}")
        bucket = _bucket_key(request, client_of)
        limited = _limit(request, bucket)
        if limited is not None:
            return limited
        cfg = request.app[RELAY]
        try:
            body = await read_request_body(request, limit=cfg.max_body_bytes, timeout=cfg.body_timeout)
        except BodyTooLarge:
            return _json(413, "body_too_large", f"request body larger than {cfg.max_body_bytes} bytes")
        return await _forward(request, "POST", gw, body, REQUEST_MEDIA_TYPE, bucket)

    async def relay_identity(request: web.Request) -> web.Response:
        gw = _gateway(request)
        limited = _limit(request, _bucket_key(request, client_of))
        if limited is not None:
            return limited
        return await _forward(request, "GET", gw, None, None)

    return relay_post, relay_identity


def install_relay(app: web.Application, config: RelayConfig, client_of: Callable[[web.Request], str], *,
                  resolver: Resolver | None = None) -> None:
    """Add the relay routes and its client session (closed in a cleanup context)."""
    app[RELAY] = config
    app[RELAY_GATEWAYS] = {}
    app[RELAY_INFLIGHT] = {}
    app[RELAY_LIMITER] = RateLimiter(config.rate_per_client, config.burst_per_client)

    async def session(app: web.Application) -> AsyncIterator[None]:
        # No total limit: a shared pool lets one silent gateway's requests hold every slot and stall
        # the others; each gateway is held to max_per_gateway instead (_forward), so the total is
        # bounded by the bundle's size.
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(config.policy, resolver), limit=0,
                                         limit_per_host=config.max_per_gateway,
                                         ttl_dns_cache=None, use_dns_cache=False)
        # The timeout is _forward's own (one timer, not aiohttp's as well); the cookie jar would
        # be filtered on every request for nothing (a relay keeps no cookies).
        app[RELAY_SESSION] = aiohttp.ClientSession(connector=connector, trust_env=False,
                                                   cookie_jar=aiohttp.DummyCookieJar(),
                                                   skip_auto_headers=_SKIP_HEADERS, auto_decompress=False,
                                                   timeout=aiohttp.ClientTimeout(total=None))
        yield
        await app[RELAY_SESSION].close()

    app.cleanup_ctx.append(session)
    post, ident = _handlers(client_of)
    app.router.add_post(RELAY_PREFIX + "/{key_id}", post)
    app.router.add_get(RELAY_PREFIX + "/{key_id}/notary", ident)
