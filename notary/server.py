"""The notary HTTP server (aiohttp).  Build it with :func:`create_app`; run it with :func:`run`.

Endpoints (all JSON; errors are ``{"error": code, "reason": text}``):

* ``GET  /v1/notary``            the signed identity document (a DSSE envelope)
* ``POST /v1/observe``           ``{"targets": [{"host", "port", "sni"?}], "nonce", "max_age"?, "all_addresses"?}``
                                  -> ``{"results": [{"target", "envelopes": [...], "freshness": {...}}]}``, request order
* ``GET  /v1/observe/{host}/{port}?nonce=...[&sni=&max_age=&all_addresses=1]``  the same for one target
* ``GET  /healthz``, ``GET /metrics`` (Prometheus text), ``GET /v1/openapi.json``

Under :func:`notary.serving.serve_app` (``parallax serve``), ``POST /v1/observe``
with exactly that request target is handed to its handler straight from the
protocol (``DIRECT_ROUTES``: no router, no middleware layers); :func:`notary.handlers.answer`
does the middleware's work for it, so every answer, error and count is the same.

The handlers are in :mod:`notary.handlers`, the rate-limit keying in
:mod:`notary.clientkey`, the metrics in :mod:`notary.metrics` and the app's
state keys in :mod:`notary.appkeys` (re-exported here).

Limits: at most ``max_targets`` targets a request, ``max_body_bytes`` a body, a
per-client token bucket (429 with ``Retry-After``), global and per-host probe
caps.  Nothing a client sends can produce a traceback or a 500 with details.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from notary import eventloop
from notary.appkeys import (
    CLOCK, CONFIG, GUARD, IDENTITY_CACHE, KEY, LIMITER, METRICS, OPENAPI_CACHE, OPS_LIMITER, REGISTRY,
    RELAY_PEER_LIMITER, REQUESTS, SERVICE, STORE, URL, WORKER,
)
from notary.clientkey import client_key, client_of, limiter_for, rate_limit
from notary.config import NotaryConfig
from notary.connguard import ConnectionGuard, raise_fd_limit
from notary.core import SigningKey
from notary.handlers import (
    answer, errors, expect_continue, healthz, identity, observe_get, observe_post, observe_post_direct, openapi,
)
from notary.handlers import metrics as metrics_handler
from notary.metrics import RequestCounts, make_metrics, probe_counter
from notary.ohttp_gateway import install_gateway
from notary.prober import Prober, Resolver
from notary.ratelimit import RateLimiter
from notary.relay import RelayConfig, install_relay
from notary.serving import DIRECT_ROUTES, DIRECT_STANDS_FOR, serve_app
from notary.service import ObservationService
from notary.store import SQLiteStore, Store

__all__ = [
    "create_app", "run", "listen_url", "client_key",
    # the app's state keys (notary.appkeys), for tests, benchmarks and notary.workers
    "CONFIG", "KEY", "SERVICE", "STORE", "WORKER", "GUARD", "LIMITER", "CLOCK", "METRICS", "REGISTRY",
    "IDENTITY_CACHE", "OPS_LIMITER", "RELAY_PEER_LIMITER", "OPENAPI_CACHE", "URL", "REQUESTS",
]

log = logging.getLogger("parallax.notary")


def listen_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` for a listening address (IPv6 in brackets)."""
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


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
    app = web.Application(middlewares=[errors], client_max_size=config.max_body_bytes)
    registry = CollectorRegistry()
    metrics = make_metrics(registry)
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
            on_probe=lambda r: probe_counter(metrics, r.status).inc(),
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

    observe = functools.partial(observe_post_direct, app)

    def observe_direct(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        # The same handler and the same middleware work as the routed POST /v1/observe,
        # without aiohttp's router and middleware layers (see notary.serving.direct_dispatch).
        return answer(app, request, observe, "/v1/observe")  # type: ignore[arg-type]
    app[DIRECT_ROUTES] = {("POST", "/v1/observe"): observe_direct}
    app[DIRECT_STANDS_FOR] = (errors,)  # answer does its work
    app.router.add_get("/v1/notary", identity)
    app.router.add_post("/v1/observe", observe_post, expect_handler=expect_continue)
    app.router.add_get("/v1/observe/{host}/{port}", observe_get)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/v1/openapi.json", openapi)
    install_gateway(app, config.data_dir, body_timeout=config.body_timeout, client_of=client_of,
                    admit=lambda r: rate_limit(r, 1), refund=lambda r: limiter_for(r, client_of(r)).refund(client_of(r), 1),
                    count=lambda result: metrics["ohttp"].labels(result=result).inc())
    if relay is not None:
        install_relay(app, relay, client_of, resolver=resolver)
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
    eventloop.run(serve_app(app, host, port, app[GUARD], bound,
                            access_log=logging.getLogger("aiohttp.access") if access_log else None))
