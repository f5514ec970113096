"""A short-lived cache of the client's own name lookups (its probe of the target, nothing else).

Theory of operation
-------------------
The client probes the target itself on every check (:func:`client.api.client_probe`).
The system resolver (``getaddrinfo``) blocks, so :class:`notary.prober.SystemResolver`
runs it on a thread: a lookup costs the client about as much CPU as a fifth of a
TLS handshake (thread hand-off included), on a check that is otherwise a
handshake plus five signature checks.  A page load checks the same name
several times within a second, so :class:`CachingResolver` remembers each
successful answer for :data:`DNS_TTL` seconds.

Why this is safe for a security tool:

* Only the name-to-address step is reused.  Every check still connects and
  completes a TLS handshake of its own, so the certificate the client compares
  with the notaries is always the one presented *now*; an interception that
  starts after a lookup is seen by the next check.
* The client's address policy allows every address (it probes what its own
  browser would reach), so no allow/refuse decision rests on a cached answer;
  the notaries' probers never use this cache (they resolve afresh, and apply
  their policy to every resolved and every connected address).
* The TTL is short (:data:`DNS_TTL`, far below the 60 s a browser keeps a name,
  and below nearly every record's own DNS TTL), the cache is bounded
  (:data:`DNS_CACHE` names, oldest evicted first), failures and empty answers
  are never cached (a name that stops resolving is reported as such at once
  once its entry expires), and an entry is keyed by the exact host and port asked.
* Within the TTL a DNS change is not seen: the client probes the address it
  resolved up to :data:`DNS_TTL` seconds ago, as its browser (which caches
  longer) would connect to it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from notary.prober import Resolver, SystemResolver

__all__ = ["CachingResolver", "DNS_TTL", "DNS_CACHE"]

#: Seconds a successful lookup is reused.
DNS_TTL = 5.0
#: Names remembered at most (least recently stored evicted first).
DNS_CACHE = 256


class CachingResolver:
    """A :class:`~notary.prober.Resolver` that remembers ``inner``'s non-empty answers for ``ttl`` seconds.

    ``clock`` is monotonic seconds.  Errors from ``inner`` propagate and are not cached.
    """

    def __init__(self, inner: Resolver | None = None, *, ttl: float = DNS_TTL, size: int = DNS_CACHE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner if inner is not None else SystemResolver()
        self.ttl, self.size, self.clock = ttl, size, clock
        self._cache: OrderedDict[tuple[str, int], tuple[float, tuple[str, ...]]] = OrderedDict()

    def cached_answer(self, host: str, port: int) -> list[str] | None:
        """The remembered answer for ``(host, port)`` while it is fresh, else None (no lookup).

        :class:`~notary.prober.Prober` asks this first: a hit needs no resolution slot, task or timer.
        """
        key = (host, port)
        hit = self._cache.get(key)
        if hit is not None:
            if self.clock() < hit[0]:
                return list(hit[1])
            self._cache.pop(key, None)
        return None

    async def resolve(self, host: str, port: int) -> list[str]:
        key = (host, port)
        hit = self.cached_answer(host, port)
        if hit is not None:
            return hit
        ips = await self.inner.resolve(host, port)
        if ips and self.ttl > 0:
            # Single dict operations only, so event loops in several threads may share the cache.
            self._cache.pop(key, None)
            self._cache[key] = (self.clock() + self.ttl, tuple(ips))  # newest last
            while len(self._cache) > self.size:
                try:
                    self._cache.popitem(last=False)
                except KeyError:  # emptied by another thread meanwhile
                    break
        return ips

    def clear(self) -> None:
        """Forget every answer."""
        self._cache.clear()
