"""Probe scheduling: who may probe now, who waits, and who is told ``busy``.

Theory of operation.  A probe needs a *slot*, and a slot is scarce: each probe
holds sockets and may take seconds (a tarpit accepts TCP and never answers,
so it holds its slot until the handshake timeout).  Without care two clients
asking for tarpits can hold every slot and starve everyone else.  Before a
probe connects (after the name is resolved and the address policy has passed
it, so a refused or unresolvable target never waits) it must get, in order:

1. a slot of its **host name** (at most ``per_host`` probes per name),
2. a slot of each **resolved address** it will connect to (at most
   ``per_address`` per IP: wildcard DNS makes names free, addresses are not),
3. a **global** slot (at most ``max_concurrent``), handed out *fairly*: waiting
   clients are served round-robin, one grant each in turn, and no client holds
   more than ``per_client`` global slots at once.

Name and address slots are taken before the global one, so probes queued for
one slow host or address never sit on global slots.  Every wait is bounded by
the request's *deadline* (``queue_timeout`` seconds after the request arrived,
advertised as ``queue_timeout_ms``); and at most ``max_queued`` probes wait at
all.  A probe that cannot be admitted raises :class:`~notary.errors.BusyError`,
which the prober turns into a signed ``busy`` observation: the client gets an
answer in time, never a longer wait.

Name resolution has slots of its own, taken *before* the name is resolved:
at most ``max_resolving`` lookups run at once and at most ``resolving_per_client``
per client network (IPv4 /24, IPv6 /48: many addresses of one operator count
as one), granted fairly like the global probe slots and waited for until the
request's deadline (then ``busy``).  A lookup holds its slot until the resolver
really returns, not just until the notary stopped waiting (a ``getaddrinfo``
cannot be cancelled and keeps its thread), so one client's slow names cannot
take every resolver thread.

The requesting client and its deadline travel in a context variable
(:func:`request_context`), so the prober, which knows nothing of HTTP, need not
pass them along.  A probe shared by several requests (single-flight) runs
under the context of the request that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator, Sequence

from notary.core.addrpolicy import network_key
from notary.errors import BusyError

__all__ = ["SchedulerLimits", "ProbeScheduler", "request_context"]

_REQUEST: contextvars.ContextVar[tuple[str, float | None]] = contextvars.ContextVar(
    "parallax_probe_request", default=("", None)
)


@contextlib.contextmanager
def request_context(client: str, deadline: float | None) -> Iterator[None]:
    """Probes started inside this block belong to ``client`` and wait no later than
    ``deadline`` (event-loop time, seconds; ``None``: ``queue_timeout`` from the wait's start)."""
    token = _REQUEST.set((client, deadline))
    try:
        yield
    finally:
        _REQUEST.reset(token)


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """Counts, and seconds for ``queue_timeout``."""

    max_concurrent: int = 64
    per_client: int = 8
    per_host: int = 4
    per_address: int = 4
    max_queued: int = 1024
    queue_timeout: float = 3.0
    max_resolving: int = 64
    resolving_per_client: int = 4


def _wait_result(fut: "asyncio.Future[None]") -> bool:
    return fut.done() and not fut.cancelled()


class _Keyed:
    """At most ``cap`` holders per key, FIFO waiters; state exists only for busy keys."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    async def acquire(self, key: str, deadline: float) -> None:
        waiters = self._waiters.get(key)
        if self._held.get(key, 0) < self.cap and not waiters:
            self._held[key] = self._held.get(key, 0) + 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, deque()).append(fut)
        try:
            async with asyncio.timeout_at(deadline):
                await fut
        except BaseException:
            if _wait_result(fut):
                self.release(key)  # granted just as we gave up: hand it on
            else:
                fut.cancel()
                self._drop(key, fut)
            raise

    def _drop(self, key: str, fut: "asyncio.Future[None]") -> None:
        q = self._waiters.get(key)
        if q is not None:
            with contextlib.suppress(ValueError):
                q.remove(fut)
            if not q:
                del self._waiters[key]

    def release(self, key: str) -> None:
        q = self._waiters.get(key)
        while q:
            fut = q.popleft()
            if not fut.done():
                if not q:
                    del self._waiters[key]
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self._waiters.pop(key, None)
        left = self._held.get(key, 1) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)


class _Fair:
    """``total`` global slots, at most ``per_client`` per client, granted round-robin by client."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.used = 0
        self._by_client: dict[str, int] = {}
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    def _grant(self, client: str) -> None:
        self.used += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1

    async def acquire(self, client: str, deadline: float) -> None:
        if self.used < self.total and self._by_client.get(client, 0) < self.per_client and client not in self._queues:
            self._grant(client)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(client, deque()).append(fut)
        try:
            async with asyncio.timeout_at(deadline):
                await fut
        except BaseException:
            if _wait_result(fut):
                self.release(client)
            else:
                fut.cancel()
                q = self._queues.get(client)
                if q is not None:
                    with contextlib.suppress(ValueError):
                        q.remove(fut)
                    if not q:
                        del self._queues[client]
            raise

    def release(self, client: str) -> None:
        self.used -= 1
        left = self._by_client.get(client, 1) - 1
        if left > 0:
            self._by_client[client] = left
        else:
            self._by_client.pop(client, None)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.used < self.total:
            client = next((c for c in self._queues if self._by_client.get(c, 0) < self.per_client), None)
            if client is None:
                return  # every waiting client is at its own cap
            q = self._queues[client]
            fut = q.popleft()
            if not q:
                del self._queues[client]
            else:
                self._queues.move_to_end(client)  # its next waiter goes to the back of the round
            if not fut.done():
                self._grant(client)
                fut.set_result(None)


class ProbeScheduler:
    """Admission of probes under :class:`SchedulerLimits` (see the module docstring)."""

    def __init__(self, limits: SchedulerLimits = SchedulerLimits()) -> None:
        self.limits = limits
        self._hosts = _Keyed(limits.per_host)
        self._addresses = _Keyed(limits.per_address)
        self._global = _Fair(limits.max_concurrent, limits.per_client)
        self._resolving = _Fair(limits.max_resolving, limits.resolving_per_client)
        self.queued = 0
        self.busy = 0

    @property
    def inflight(self) -> int:
        """Probes holding a global slot now."""
        return self._global.used

    @property
    def resolving(self) -> int:
        """Lookups holding a resolution slot now."""
        return self._resolving.used

    async def resolve_slot(self) -> Callable[[], None]:
        """Wait (fairly, until the request's deadline) for a resolution slot; return its release.

        Raises :class:`BusyError` past the deadline.  The release is idempotent.
        """
        client, deadline = _REQUEST.get()
        client = network_key(client)  # one network's many addresses share its lookups
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self.limits.queue_timeout
        try:
            await self._resolving.acquire(client, deadline)
        except TimeoutError:
            self.busy += 1
            raise BusyError(f"no resolution slot within {self.limits.queue_timeout:g}s") from None
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._resolving.release(client)
        return release

    @contextlib.asynccontextmanager
    async def admit(self, host: str, ips: Sequence[str]) -> AsyncIterator[None]:
        """Hold every slot a probe of ``host`` at ``ips`` needs, or raise :class:`BusyError`."""
        client, deadline = _REQUEST.get()
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.limits.queue_timeout
        held: list[tuple[_Keyed, str]] = []
        got_global = False
        if self.queued >= self.limits.max_queued:
            self.busy += 1
            raise BusyError(f"probe queue full ({self.limits.max_queued} waiting)")
        self.queued += 1
        try:
            try:
                await self._hosts.acquire(host, deadline)
                held.append((self._hosts, host))
                for ip in sorted(set(ips)):  # one order for everyone: no deadlock between multi-address probes
                    await self._addresses.acquire(ip, deadline)
                    held.append((self._addresses, ip))
                await self._global.acquire(client, deadline)
                got_global = True
            except TimeoutError:
                self.busy += 1
                raise BusyError(f"no probe slot within {self.limits.queue_timeout:g}s") from None
            finally:
                self.queued -= 1
            yield
        finally:
            if got_global:
                self._global.release(client)
            for pool, key in reversed(held):
                pool.release(key)
