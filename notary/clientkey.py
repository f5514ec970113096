"""Who is asking, and how much they may ask: the rate-limit key of a request and its token buckets.

:func:`client_key` turns a peer address (and, behind a trusted proxy, its
``X-Forwarded-For`` hops) into the key a client is limited by; :func:`rate_limit`
takes tokens from that key's bucket or raises :class:`TooMany` (a 429 with
``Retry-After``).  ``--relay-peer`` relays draw from a larger bucket table of
their own (:func:`limiter_for`).  No address is ever logged here.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time

from aiohttp import web

from notary.appkeys import CONFIG, LIMITER, RELAY_PEER_LIMITER
from notary.config import NotaryConfig
from notary.core.addrpolicy import IPAddress, IPNetwork
from notary.ratelimit import RateLimiter

__all__ = ["client_key", "client_of", "limiter_for", "rate_limit", "TooMany"]


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


def client_of(request: web.Request, config: NotaryConfig | None = None) -> str:
    """The request's rate-limit key (memoised: the same peer asks again and again).

    Raises ``ConnectionResetError`` when the request has no peer address: its connection
    was gone before the request was handled (aiohttp still runs a request it had parsed),
    so no one will read the answer and nothing is charged or probed for it.
    """
    peer = request.remote
    if peer is None:
        raise ConnectionResetError("the client disconnected before its request was handled")
    trusted = (config if config is not None else request.app[CONFIG]).trusted_proxies
    if not trusted:  # no proxy to believe: X-Forwarded-For is ignored (see client_key)
        return _client_key_cached(peer, (), ())
    return _client_key_cached(peer, tuple(request.headers.getall("X-Forwarded-For", [])), trusted)


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


def limiter_for(request: web.Request, client: str, bucket: "web.AppKey[RateLimiter]" = LIMITER,
             app: web.Application | None = None) -> RateLimiter:
    """The bucket table for ``client``: a relay peer's observation budget is its own, larger one."""
    if app is None:
        app = request.app
    if bucket is LIMITER:
        peers = app[CONFIG].relay_peers
        if peers and _in_networks(client, peers):
            return app[RELAY_PEER_LIMITER]
    return app[bucket]


def rate_limit(request: web.Request, cost: int, bucket: "web.AppKey[RateLimiter]" = LIMITER,
                app: web.Application | None = None) -> str:
    """Take ``cost`` tokens from the request's client (429 :class:`TooMany` if it has too few); its key."""
    if app is None:
        app = request.app
    client, now = client_of(request, app[CONFIG]), time.monotonic()
    limiter = limiter_for(request, client, bucket, app)
    wait = limiter.check(client, now, cost)
    if wait > 0:
        # A refused request is charged too (down to -burst): a client that keeps asking while
        # limited stays limited.  Retry-After is the wait after that charge.  The 429 is held
        # for half that wait (at most rate_limit_delay), never long enough to earn a token back.
        limiter.charge(client, cost)
        wait = limiter.check(client, now, cost)
        raise TooMany(wait, min(wait / 2, app[CONFIG].rate_limit_delay))
    return client


class TooMany(web.HTTPTooManyRequests):
    """A 429 with ``Retry-After`` (whole seconds, at least 1), held ``delay`` seconds before it is sent."""

    def __init__(self, wait: float, delay: float = 0.0) -> None:
        super().__init__(headers={"Retry-After": str(max(1, math.ceil(wait)))})
        self.delay = delay
