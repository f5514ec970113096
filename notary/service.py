"""The observation service: cache, single-flight probes, concurrency caps, signing.

Between the HTTP server and the prober/store.  For each requested target it
either answers from a cached probe round (younger than both the caller's
``max_age`` and the notary's TTL) or runs a fresh probe.  Concurrent requests
for the same target share one in-flight probe.  A global semaphore caps
concurrent probes; a per-host semaphore caps probes of one host.  Every result
is stored before it is signed and returned.

Signing (:mod:`notary.signer`, protocol version 2): a round's observations are
signed once, when the round is probed (or first read back from the store), and
cached with it; each answer binds the request's nonce to them with a freshness
leaf, signed in a batch with every other answer of the same event-loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import AsyncIterator, Callable, TypeVar

from notary.core import KeySighting, ProbeResult, SigningKey, Target
from notary.prober import Prober
from notary.signer import Answer, FreshnessBatcher, SignedRound, sign_round
from notary.store import Store

__all__ = ["ServiceLimits", "ObservationService"]

log = logging.getLogger("parallax.notary")

K = TypeVar("K")
V = TypeVar("V")
CACHE_ENTRIES = 10_000


def _put(cache: "OrderedDict[K, V]", key: K, value: V) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > CACHE_ENTRIES:
        cache.popitem(last=False)


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """Counts and seconds."""

    ttl: int = 300
    max_concurrent_probes: int = 64
    max_probes_per_host: int = 4


class ObservationService:
    def __init__(
        self,
        key: SigningKey,
        prober: Prober,
        store: Store,
        *,
        clock: Callable[[], int],
        limits: ServiceLimits = ServiceLimits(),
        on_probe: Callable[[ProbeResult], None] | None = None,
        on_duration: Callable[[float], None] | None = None,
    ) -> None:
        self.key = key
        self.prober = prober
        self.store = store
        self.clock = clock
        self.limits = limits
        self.on_probe = on_probe
        self.on_duration = on_duration
        self._global = asyncio.Semaphore(limits.max_concurrent_probes)
        # Per-host semaphores exist only while some probe of that host runs.
        self._per_host: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self._inflight_rounds: dict[tuple[Target, bool], asyncio.Future[SignedRound]] = {}
        # Write-through memory cache of signed rounds in front of the store (bounded LRU).
        self._latest: OrderedDict[tuple[Target, bool], SignedRound] = OrderedDict()
        self.freshness = FreshnessBatcher(key, clock)
        self.cache_hits = 0
        self.probes = 0
        self.inflight = 0

    async def observe(
        self, target: Target, nonce: str, *, max_age: int | None = None, all_addresses: bool = False
    ) -> Answer:
        """The answer for ``target``: the round's observations (signed once), bound to ``nonce``."""
        signed, source = await self._round(target, max_age, all_addresses)
        return Answer(signed, *await self.freshness.stamp_with_json(nonce, signed.digests, source))

    async def _round(self, target: Target, max_age: int | None, all_addresses: bool) -> tuple[SignedRound, str]:
        ttl = self.limits.ttl if max_age is None else min(max_age, self.limits.ttl)
        if ttl > 0:
            key = (target, all_addresses)
            cached = self._latest.get(key)
            if cached is None:
                stored = await self.store.latest(target, all_addresses=all_addresses)
                if stored and self.clock() - stored[0].observed_at <= ttl:
                    cached = await self._sign(target, stored)
                    _put(self._latest, key, cached)
            if cached is not None and self.clock() - cached.observed_at <= ttl:
                self.cache_hits += 1
                return cached, "cached"
        return await self._fresh_round(target, all_addresses), "fresh"

    async def fresh(self, target: Target, *, all_addresses: bool = False) -> list[ProbeResult]:
        """Probe now (sharing an in-flight probe of the same target) and store the result."""
        return (await self._fresh_round(target, all_addresses)).results

    async def _fresh_round(self, target: Target, all_addresses: bool) -> SignedRound:
        key = (target, all_addresses)
        fut = self._inflight_rounds.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._probe_and_store(target, all_addresses))
            self._inflight_rounds[key] = fut
            fut.add_done_callback(lambda _f: self._inflight_rounds.pop(key, None))
        return await asyncio.shield(fut)

    async def _sign(self, target: Target, results: list[ProbeResult]) -> SignedRound:
        history: tuple[KeySighting, ...] = await self.store.key_history(target)
        return sign_round(results, self.key, history)

    @contextlib.asynccontextmanager
    async def _host_slot(self, host: str) -> AsyncIterator[None]:
        entry = self._per_host.get(host)
        if entry is None:
            entry = self._per_host[host] = (asyncio.Semaphore(self.limits.max_probes_per_host), [0])
        entry[1][0] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1][0] -= 1
            if entry[1][0] == 0:
                del self._per_host[host]

    async def _probe_and_store(self, target: Target, all_addresses: bool) -> SignedRound:
        # Per-host slot first: requests queued for one slow host must not hold global slots.
        async with self._host_slot(target.host), self._global:
            self.probes += 1
            self.inflight += 1
            started = time.monotonic()
            try:
                results = await self.prober.probe(target, all_addresses=all_addresses)
            finally:
                self.inflight -= 1
                if self.on_duration:
                    self.on_duration(time.monotonic() - started)
        await self.store.add(results, all_addresses=all_addresses)
        signed = await self._sign(target, results)
        _put(self._latest, (target, all_addresses), signed)
        for r in results:
            log.info("probed %s ip=%s status=%s spki=%s", target, r.ip, r.status, r.spki_sha256)
            if self.on_probe:
                self.on_probe(r)
        return signed
