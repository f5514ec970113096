"""A per-client token bucket (pure: the caller passes ``now`` in seconds)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """``rate`` requests per second sustained, ``burst`` at once, per client key.

    Tracks at most ``max_clients`` keys, so memory stays bounded under a flood of
    source addresses.  A key is forgotten only once its bucket has refilled (so
    forgetting it loses nothing): when the table is full and even the least
    recently seen bucket is still draining, a new key is not given a fresh bucket
    but charged to one shared *overflow* bucket (same ``rate`` and ``burst``).
    Rotating through more keys than the table holds therefore never resets a
    limited client; during such a flood new keys share one client's allowance
    (:attr:`overflowed` counts the checks charged to it; ``/metrics`` shows it).
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self.overflowed = 0
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._overflow = _Bucket(float(burst), 0.0)

    def _refill(self, b: _Bucket, now: float) -> None:
        b.tokens = min(float(self.burst), b.tokens + max(0.0, now - b.stamp) * self.rate)
        b.stamp = now

    def _new_bucket(self, client: str, now: float) -> _Bucket:
        if len(self._buckets) >= self.max_clients:
            oldest = next(iter(self._buckets.values()))
            self._refill(oldest, now)
            if oldest.tokens < self.burst:
                self.overflowed += 1
                self._refill(self._overflow, now)
                return self._overflow
            self._buckets.popitem(last=False)
        b = _Bucket(float(self.burst), now)
        self._buckets[client] = b
        return b

    def _tracked(self, client: str) -> _Bucket:
        return self._buckets.get(client, self._overflow)

    def check(self, client: str, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens.  Returns 0 when allowed, else seconds until it would be."""
        if self.rate <= 0:
            return 0.0
        b = self._buckets.get(client)
        if b is None:
            b = self._new_bucket(client, now)
        else:
            self._buckets.move_to_end(client)
            self._refill(b, now)
        cost = min(cost, float(self.burst))
        if b.tokens >= cost:
            b.tokens -= cost
            return 0.0
        return (cost - b.tokens) / self.rate

    def charge(self, client: str, extra: float) -> None:
        """Take ``extra`` more tokens after the fact (work that turned out larger than
        announced); the bucket may go down to ``-burst``, so the client waits it off."""
        b = self._tracked(client)
        if self.rate > 0 and extra > 0:
            b.tokens = max(-float(self.burst), b.tokens - extra)

    def refund(self, client: str, amount: float) -> None:
        """Give ``amount`` tokens back (a deposit taken before work that turned out to be
        charged elsewhere); never above ``burst``."""
        b = self._tracked(client)
        if self.rate > 0 and amount > 0:
            b.tokens = min(float(self.burst), b.tokens + amount)
