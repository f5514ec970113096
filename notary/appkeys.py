"""The notary application's state: one typed :class:`aiohttp.web.AppKey` per item.

:func:`notary.server.create_app` fills every key; the handlers
(:mod:`notary.handlers`), the client keying and rate limits
(:mod:`notary.clientkey`) and :mod:`notary.workers` read them.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from notary.config import NotaryConfig
from notary.connguard import ConnectionGuard
from notary.core import SigningKey
from notary.metrics import RequestCounts
from notary.ratelimit import RateLimiter
from notary.service import ObservationService
from notary.store import SQLiteStore

__all__ = [
    "CONFIG", "KEY", "STORE", "SERVICE", "LIMITER", "METRICS", "REGISTRY", "CLOCK", "IDENTITY_CACHE", "GUARD",
    "OPS_LIMITER", "RELAY_PEER_LIMITER", "OPENAPI_CACHE", "URL", "WORKER", "REQUESTS",
]

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
#: The URL the identity document names: ``[config.url]``, or filled from the bound address (see :func:`notary.server.run`).
URL = web.AppKey("url", list)
#: Set by :mod:`notary.workers` in each worker process (``--workers N``): its index, shown by /healthz.
WORKER = web.AppKey("worker", int)
#: Requests counted by route and status code (exported by /metrics).
REQUESTS = web.AppKey("requests", RequestCounts)
