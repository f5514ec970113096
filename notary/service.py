"""The observation service: cache, single-flight probes, concurrency caps, signing.

Between the HTTP server and the prober/store.  For each requested target it
either re-signs a cached probe round (younger than both the caller's
``max_age`` and the notary's TTL) with this request's nonce, or runs a fresh
probe.  Concurrent requests for the same target share one in-flight probe.
Probe slots (per host name, per resolved address, per client, global, fair
between clients, bounded wait) belong to :mod:`notary.scheduler`; a probe that
cannot get its slots before the request's deadline is a ``busy`` observation.
Every result is stored before it is signed and returned, except those that say
nothing about the target: ``busy`` and ``blocked_by_policy`` (a refusal is
decided afresh under the policy in force, never stored or cached).  A cached
round is served only if the current address policy still allows its port and
every address in it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from notary.core import KeySighting, Observation, ProbeResult, SigningKey, Target, sign_observation
from notary.prober import Prober
from notary.scheduler import ProbeScheduler, SchedulerLimits, request_context
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


#: Statuses that are not facts about the target: never stored, never served from cache.
UNSTORED = frozenset({"busy", "blocked_by_policy"})


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """Counts and seconds.  See :class:`notary.scheduler.SchedulerLimits` for the probe slots."""

    ttl: int = 300
    max_concurrent_probes: int = 64
    max_probes_per_host: int = 4
    max_probes_per_client: int = 8
    max_probes_per_address: int = 4
    max_queued_probes: int = 1024
    queue_timeout: float = 3.0

    def scheduler_limits(self) -> SchedulerLimits:
        return SchedulerLimits(
            max_concurrent=self.max_concurrent_probes, per_client=self.max_probes_per_client,
            per_host=self.max_probes_per_host, per_address=self.max_probes_per_address,
            max_queued=self.max_queued_probes, queue_timeout=self.queue_timeout,
        )


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
        self.scheduler = ProbeScheduler(limits.scheduler_limits())
        prober.admit = self.scheduler.admit  # the prober asks the scheduler before it connects
        self._inflight: dict[tuple[Target, bool], asyncio.Future[list[ProbeResult]]] = {}
        # Write-through memory caches in front of the store (bounded LRU).
        self._latest: OrderedDict[tuple[Target, bool], list[ProbeResult]] = OrderedDict()
        self._history: OrderedDict[Target, tuple[KeySighting, ...]] = OrderedDict()
        self.cache_hits = 0
        self.probes = 0

    @property
    def inflight(self) -> int:
        """Probes holding a global slot now."""
        return self.scheduler.inflight

    async def observe(
        self, target: Target, nonce: str, *, max_age: int | None = None, all_addresses: bool = False,
        client: str = "", deadline: float | None = None,
    ) -> list[dict[str, Any]]:
        """Signed envelopes (one per probed address) for ``target``, bound to ``nonce``.

        ``client`` (the rate-limit key) and ``deadline`` (event-loop seconds) bound the
        wait for probe slots; see :mod:`notary.scheduler`.
        """
        with request_context(client, deadline):
            results, source = await self._results(target, max_age, all_addresses)
        history = await self._key_history(target)
        now = self.clock()
        return [
            sign_observation(
                Observation.from_probe(
                    r, notary=self.key.key_id, nonce=nonce, signed_at=now, source=source,
                    key_history=history,
                ),
                self.key,
            )
            for r in results
        ]

    def sign_error(self, target: Target, ip: str | None, nonce: str, status: str, detail: str) -> dict[str, Any]:
        """A signed error observation made now (not a probe: ``answer_too_large`` and the like)."""
        now = self.clock()
        return sign_observation(
            Observation.from_probe(ProbeResult.failure(target, ip, now, status, detail), notary=self.key.key_id,
                                   nonce=nonce, signed_at=now, source="fresh"),
            self.key,
        )

    async def _results(
        self, target: Target, max_age: int | None, all_addresses: bool
    ) -> tuple[list[ProbeResult], str]:
        ttl = self.limits.ttl if max_age is None else min(max_age, self.limits.ttl)
        if ttl > 0:
            cached = self._latest.get((target, all_addresses))
            if cached is None:
                cached = await self.store.latest(target, all_addresses=all_addresses)
                if cached:
                    _put(self._latest, (target, all_addresses), cached)
            if cached and self.clock() - cached[0].observed_at <= ttl and self._allowed_now(cached):
                self.cache_hits += 1
                return cached, "cached"
        return await self.fresh(target, all_addresses=all_addresses), "fresh"

    def _allowed_now(self, results: list[ProbeResult]) -> bool:
        """Whether the address policy in force still allows this cached round (port and every address)."""
        policy = self.prober.policy
        if any(r.status in UNSTORED for r in results):
            return False  # a refusal or busy answer from an older store is decided afresh
        if policy.port_reason(results[0].target.port):
            return False
        return not any(r.ip is not None and policy.address_reason(r.ip) for r in results)

    async def fresh(self, target: Target, *, all_addresses: bool = False) -> list[ProbeResult]:
        """Probe now (sharing an in-flight probe of the same target) and store the result."""
        key = (target, all_addresses)
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._probe_and_store(target, all_addresses))
            self._inflight[key] = fut
            fut.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return await asyncio.shield(fut)

    async def _key_history(self, target: Target) -> tuple[KeySighting, ...]:
        history = self._history.get(target)
        if history is None:
            history = await self.store.key_history(target)
            _put(self._history, target, history)
        return history

    async def _probe_and_store(self, target: Target, all_addresses: bool) -> list[ProbeResult]:
        self.probes += 1
        started = time.monotonic()
        try:
            results = await self.prober.probe(target, all_addresses=all_addresses)
        finally:
            if self.on_duration:
                self.on_duration(time.monotonic() - started)
        if not any(r.status in UNSTORED for r in results):
            await self.store.add(results, all_addresses=all_addresses)
            _put(self._latest, (target, all_addresses), results)
            self._history.pop(target, None)
        for r in results:
            log.info("probed %s ip=%s status=%s spki=%s", target, r.ip, r.status, r.spki_sha256)
            if self.on_probe:
                self.on_probe(r)
        return results
