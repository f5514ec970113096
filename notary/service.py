"""The observation service: cache, single-flight probes, concurrency caps, signing.

Between the HTTP server and the prober/store.  For each requested target it
either answers from a cached probe round (younger than both the caller's
``max_age`` and the notary's TTL) or runs a fresh probe.  Concurrent requests
for the same target share one in-flight probe.
Probe slots (per host name, per resolved address, per client, global, fair
between clients, bounded wait) belong to :mod:`notary.scheduler`; a probe that
cannot get its slots before the request's deadline is a ``busy`` observation.
Every result is stored before it is signed and returned, except those that say
nothing about the target: ``busy`` (including a name lookup that outlasted the
notary's resolve timeout) and ``blocked_by_policy`` (a refusal is
decided afresh under the policy in force, never stored or cached).  A cached
round is served only if the current address policy still allows its port and
every address in it.

Signing (:mod:`notary.signer`, protocol version 2): a round's observations are
signed once, when the round is probed (or first read back from the store), and
cached with it; each answer binds the request's nonce to them with a freshness
leaf, signed in a batch with every other answer of the same event-loop turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from notary.core import KeySighting, ProbeResult, SigningKey, Target
from notary.prober import Prober
from notary.scheduler import ProbeScheduler, SchedulerLimits, request_context
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
    max_resolving: int = 64
    max_resolving_per_client: int = 4

    def scheduler_limits(self) -> SchedulerLimits:
        return SchedulerLimits(
            max_concurrent=self.max_concurrent_probes, per_client=self.max_probes_per_client,
            per_host=self.max_probes_per_host, per_address=self.max_probes_per_address,
            max_queued=self.max_queued_probes, queue_timeout=self.queue_timeout,
            max_resolving=self.max_resolving, resolving_per_client=self.max_resolving_per_client,
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
        prober.resolve_slot = self.scheduler.resolve_slot  # ... and before it resolves a name
        self._inflight_rounds: dict[tuple[Target, bool], asyncio.Future[SignedRound]] = {}
        # Write-through memory cache of signed rounds in front of the store (bounded LRU).
        self._latest: OrderedDict[tuple[Target, bool], SignedRound] = OrderedDict()
        self.freshness = FreshnessBatcher(key, clock)
        self.cache_hits = 0
        self.probes = 0

    @property
    def inflight(self) -> int:
        """Probes holding a global slot now."""
        return self.scheduler.inflight

    async def observe(
        self, target: Target, nonce: str, *, max_age: int | None = None, all_addresses: bool = False,
        client: str = "", deadline: float | None = None,
    ) -> Answer:
        """The answer for ``target``: the round's observations (signed once), bound to ``nonce``.

        ``client`` (the rate-limit key) and ``deadline`` (event-loop seconds) bound the
        wait for probe slots; see :mod:`notary.scheduler`.
        """
        signed, source = await self.round(target, max_age=max_age, all_addresses=all_addresses,
                                          client=client, deadline=deadline)
        return await self.stamp(signed, nonce, source)

    async def round(
        self, target: Target, *, max_age: int | None = None, all_addresses: bool = False,
        client: str = "", deadline: float | None = None,
    ) -> tuple[SignedRound, str]:
        """The signed round that answers ``target`` and its source (``cached`` or ``fresh``)."""
        cached = self.cached(target, max_age=max_age, all_addresses=all_addresses)
        if cached is not None:  # the common case: no store, no probe, no request context
            return cached, "cached"
        with request_context(client, deadline):
            return await self._round(target, max_age, all_addresses)

    def cached(self, target: Target, *, max_age: int | None = None, all_addresses: bool = False) -> SignedRound | None:
        """The round in the memory cache that may answer ``target`` now (young enough and allowed
        by the policy in force), else None.  Reads neither the store nor the network."""
        ttl = self.limits.ttl if max_age is None else min(max_age, self.limits.ttl)
        if ttl <= 0:
            return None
        cached = self._latest.get((target, all_addresses))
        if cached is not None and self.clock() - cached.observed_at <= ttl and self._allowed_now(cached):
            self.cache_hits += 1
            return cached
        return None

    async def stamp(self, signed: SignedRound, nonce: str, source: str) -> Answer:
        """``signed`` bound to ``nonce`` by a freshness leaf (batched with this turn's other answers)."""
        return Answer(signed, None, await self.freshness.submit(nonce, signed.digests, source))

    def sign_error(self, target: Target, ip: str | None, status: str, detail: str) -> tuple[dict[str, Any], str]:
        """A signed error observation made now (not a probe: ``answer_too_large`` and the like).

        Returns the envelope and its observation digest (what a freshness leaf names).
        """
        signed = sign_round([ProbeResult.failure(target, ip, self.clock(), status, detail)], self.key, ())
        return signed.envelopes[0], signed.digests[0]

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
            if cached is not None and self.clock() - cached.observed_at <= ttl and self._allowed_now(cached):
                self.cache_hits += 1
                return cached, "cached"
        return await self._fresh_round(target, all_addresses), "fresh"

    def _allowed_now(self, signed: SignedRound) -> bool:
        """Whether the address policy in force still allows this cached round (port and every address).

        The verdict is remembered with the round for that policy object (policies are
        frozen): a replaced policy is checked in full on the next answer.
        """
        policy = self.prober.policy
        if signed.allowed_under is policy:
            return True
        results = signed.results
        if any(r.status in UNSTORED for r in results):
            return False  # a refusal or busy answer from an older store is decided afresh
        if policy.port_reason(results[0].target.port):
            return False
        if any(r.ip is not None and policy.address_reason(r.ip) for r in results):
            return False
        signed.allowed_under = policy
        return True

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

    async def _probe_and_store(self, target: Target, all_addresses: bool) -> SignedRound:
        self.probes += 1
        started = time.monotonic()
        try:
            results = await self.prober.probe(target, all_addresses=all_addresses)
        finally:
            if self.on_duration:
                self.on_duration(time.monotonic() - started)
        if any(r.status in UNSTORED for r in results):
            signed = sign_round(results, self.key, ())  # says nothing about the target: no history, not kept
        else:
            # The answer waits for the commit (synchronous=FULL: see notary.store); the store reads
            # the key history in the same job, right after it, when it can.
            history = await self.store.add(results, all_addresses=all_addresses)
            if history is None:
                history = await self.store.key_history(target)
            signed = sign_round(results, self.key, history)
            _put(self._latest, (target, all_addresses), signed)
        for r in results:
            log.info("probed %s ip=%s status=%s spki=%s", target, r.ip, r.status, r.spki_sha256)
            if self.on_probe:
                self.on_probe(r)
        return signed
