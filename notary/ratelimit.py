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

    Tracks at most ``max_clients`` keys (least recently seen dropped first), so
    memory stays bounded under a flood of source addresses.
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, client: str, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens.  Returns 0 when allowed, else seconds until it would be."""
        if self.rate <= 0:
            return 0.0
        b = self._buckets.get(client)
        if b is None:
            b = _Bucket(float(self.burst), now)
            self._buckets[client] = b
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
        cost = min(cost, float(self.burst))
        if b.tokens >= cost:
            b.tokens -= cost
            return 0.0
        return (cost - b.tokens) / self.rate

    def charge(self, client: str, extra: float) -> None:
        """Take ``extra`` more tokens after the fact (work that turned out larger than
        announced); the bucket may go down to ``-burst``, so the client waits it off."""
        b = self._buckets.get(client)
        if b is not None and self.rate > 0 and extra > 0:
            b.tokens = max(-float(self.burst), b.tokens - extra)

    def refund(self, client: str, amount: float) -> None:
        """Give ``amount`` tokens back (a deposit taken before work that turned out to be
        charged elsewhere); never above ``burst``."""
        b = self._buckets.get(client)
        if b is not None and self.rate > 0 and amount > 0:
            b.tokens = min(float(self.burst), b.tokens + amount)
