"""Connection guard, part two: each connection's deadlines and the guard's counts (see :mod:`notary.connguard`).

``_Guarded`` is the small :class:`asyncio.Protocol` every admitted connection passes
through: it forwards bytes unchanged to aiohttp's protocol and enforces the head
(``head_timeout`` seconds) and idle (``idle_timeout`` seconds) deadlines with one
lazy timer.  :class:`ConnectionGuard` counts connections per client, per network
(IPv4 /24, IPv6 /48) and in total; it admits, evicts (at most ``EVICT_SCAN``
waiting connections looked at per eviction) and refuses.  The two share their
bookkeeping, so they live together; the accept loop is :class:`notary.connguard.Acceptor`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any, Callable, cast

from notary.connguard_limits import _TOO_MANY_CLIENT, _TOO_MANY_GLOBAL, _TOO_MANY_NET, ConnLimits, Throttled, fd_cap
from notary.core.addrpolicy import IPNetwork, network_key
from notary.eventloop import TIMER_SLACK

__all__ = ["ConnectionGuard", "EVICT_SCAN"]

log = logging.getLogger("parallax.notary")


EVICT_SCAN = 64  # waiting connections looked at per eviction (bounds the work of a refused newcomer)


class _Guarded(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol; enforces the head and idle deadlines."""

    def __init__(self, guard: "ConnectionGuard", factory: Callable[[], asyncio.Protocol], client: str) -> None:
        self.guard = guard
        self.factory = factory
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.client = client
        self.net = network_key(client)
        self.counted = True  # admitted by the acceptor; released in connection_lost
        self.pending = True  # counted in the network's pending cap until its first request starts
        self.evicted = False
        self.busy = 0
        self.got_bytes = False
        self.fresh = True  # no request handled yet on this connection
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0  # event-loop time when the current wait (head or idle) expires

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's, or uvloop's, which is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)
        if self.evicted:  # evicted while its transport was being built
            self.transport.abort()
            return
        self._arm(self.guard.limits.head_timeout)
        self.inner = self.factory()
        self.guard._by_inner[self.inner] = self
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return  # an evicted connection: its bytes are dropped
        if not self.busy and not self.got_bytes and data:
            self.got_bytes = True
            if not self.fresh:  # keep-alive: the head clock starts with its first byte
                self._arm(self.guard.limits.head_timeout)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.counted:
            self.counted = False
            self.guard._release(self)
        if self.inner is not None:
            self.guard._by_inner.pop(self.inner, None)
            self.inner.connection_lost(exc)

    # -- deadlines -------------------------------------------------------------------
    # Lazy timers: a state change only moves ``deadline``; no timer is cancelled or
    # created per request.  Whenever the connection waits (not busy) one timer is
    # pending, due no later than its deadline: it is never set further ahead than
    # ``timer_step`` (the shorter of ``head_timeout`` and ``idle_timeout``, at least 1 s),
    # so with the default limits a deadline moved earlier (the first byte of a kept-alive
    # request starts the head clock) is still met without touching the timer; a deadline
    # earlier than the pending timer (a timeout under ``timer_step``) replaces it.  When it
    # fires early it re-arms for what is left; on a busy connection it lapses and
    # ``request_finished`` re-arms.
    def _arm(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.deadline = now + seconds
        timer = self.timer
        if timer is not None and timer.when() > self.deadline:
            timer.cancel()
            timer = self.timer = None
        if timer is None:
            self.timer = loop.call_at(min(self.deadline, now + self.guard.timer_step), self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.busy or self.transport is None or self.inner is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.deadline - now > TIMER_SLACK:  # the deadline moved since this timer was set
            self.timer = loop.call_at(min(self.deadline, now + self.guard.timer_step), self._expired)
            return
        kind = "idle" if not self.fresh and not self.got_bytes else "head"
        self.guard.closed[kind] += 1
        self.guard.throttled.warning(
            f"close-{kind}",
            "closed a connection: "
            + ("idle past the keep-alive deadline" if kind == "idle" else "request head not received in time"),
        )
        self.transport.abort()

    def evict(self) -> None:
        """Abort this (waiting, never busy) connection to make room at the global cap."""
        self.evicted = True
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    def request_started(self) -> None:
        self.busy += 1  # a pending timer lapses when it fires (see _expired)
        self.guard._not_waiting(self)

    def request_finished(self) -> None:
        self.busy = max(0, self.busy - 1)
        if not self.busy:
            self.fresh = False
            self.got_bytes = False
            self._arm(self.guard.limits.idle_timeout)
            self.guard._waiting_since_now(self)


class ConnectionGuard:
    """Counts connections per client, per network and in total; admits, evicts and refuses.

    ``trusted`` networks (reverse proxies) are exempt from the per-client and
    per-network caps.  ``open``, ``refused``, ``closed`` and ``evicted`` are live
    counters (for metrics and tests); ``open`` includes evicted connections until
    their descriptor is closed.
    """

    def __init__(self, limits: ConnLimits = ConnLimits(), *, trusted: tuple[IPNetwork, ...] = (),  # noqa: B008 - a frozen dataclass
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.trusted = trusted
        self.clock = clock
        self.max_connections = fd_cap(limits.max_connections, limits.fd_reserve, limits.backlog)
        #: How far ahead a connection's (lazy) deadline timer is ever set, in seconds.
        # At most the shorter deadline (so a deadline moved earlier is met without a cancel), but
        # never under a second: a zero or tiny timeout must not make a waiting connection's timer
        # spin (an earlier deadline than the pending timer is then handled by a cancel in _arm).
        positive = [t for t in (limits.head_timeout, limits.idle_timeout) if t > 0]
        self.timer_step = max(1.0, min(positive)) if positive else 1.0
        self.open = 0
        self.dying = 0  # evicted, descriptor not yet closed
        self.per_client: dict[str, int] = {}
        self.per_net: dict[str, int] = {}  # open connections per IPv4 /24, IPv6 /48
        self.pending_per_net: dict[str, int] = {}
        self.refused = {"client": 0, "global": 0}
        self.closed = {"head": 0, "idle": 0}
        self.evicted = 0
        self.throttled = Throttled(log, limits.log_interval)
        self._by_inner: dict[asyncio.BaseProtocol, _Guarded] = {}
        # Connections not handling a request, oldest wait first (insertion order; value: since when).
        self._waiting: dict[_Guarded, float] = {}

    def _is_trusted(self, client: str) -> bool:
        try:
            addr = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(addr.version == n.version and addr in n for n in self.trusted)

    def admit(self, client: str, factory: Callable[[], asyncio.Protocol]) -> "_Guarded | bytes":
        """Admit a connection from ``client`` (a key from :func:`_client_of`): its protocol, or a refusal to send."""
        trusted = self._is_trusted(client)
        held = self.per_client.get(client, 0)
        if held >= self.limits.max_per_client and not trusted:
            self.refused["client"] += 1
            self.throttled.warning("refuse-client", f"refusing connections from a client holding {held} (limit {self.limits.max_per_client})")
            return _TOO_MANY_CLIENT
        net = network_key(client)
        pending = self.pending_per_net.get(net, 0)
        if pending >= self.limits.max_pending_per_net and not trusted:
            self.refused["client"] += 1
            self.throttled.warning(
                "refuse-net", f"refusing connections from a network with {pending} awaiting a request (limit {self.limits.max_pending_per_net})"
            )
            return _TOO_MANY_NET
        if self.open - self.dying >= self.max_connections and not self._evict_one(net):
            self.refused["global"] += 1
            self.throttled.warning("refuse-global", f"refusing connections: {self.open} open (limit {self.max_connections})")
            return _TOO_MANY_GLOBAL
        conn = _Guarded(self, factory, client)
        self.open += 1
        self.per_client[client] = held + 1
        self.pending_per_net[net] = pending + 1
        self.per_net[net] = self.per_net.get(net, 0) + 1
        self._waiting[conn] = self.clock()
        return conn

    def _evict_one(self, net: str) -> bool:
        """Make room for a newcomer from ``net`` by evicting a waiting connection; True if one was.

        The victim is the longest-waiting connection (waited at least ``evict_after``
        seconds) of a network that holds at least two more connections than the
        newcomer's: a newcomer from a network with few connections displaces one from
        a network with many, never the other way round, so connections from many
        networks cannot churn each other young to keep everyone else out.  Only the
        ``EVICT_SCAN`` longest-waiting connections are looked at.
        """
        if self.dying >= self.limits.backlog:
            return False
        mine = self.per_net.get(net, 0)
        now = self.clock()
        victim: _Guarded | None = None
        for i, (conn, since) in enumerate(self._waiting.items()):
            if i >= EVICT_SCAN or now - since < self.limits.evict_after:
                break
            if self.per_net.get(conn.net, 0) > mine + 1:
                victim = conn
                break
        if victim is None:
            return False
        del self._waiting[victim]
        self.dying += 1
        self.evicted += 1
        self.throttled.warning("evict", f"at the connection limit ({self.max_connections}): evicted a long-waiting connection")
        victim.evict()
        return True

    def _not_waiting(self, conn: _Guarded) -> None:
        self._waiting.pop(conn, None)
        if conn.pending:
            conn.pending = False
            self._drop_pending(conn.net)

    def _waiting_since_now(self, conn: _Guarded) -> None:
        if conn.counted and not conn.evicted:
            self._waiting.pop(conn, None)
            self._waiting[conn] = self.clock()

    def _drop_pending(self, net: str) -> None:
        left = self.pending_per_net.get(net, 1) - 1
        if left > 0:
            self.pending_per_net[net] = left
        else:
            self.pending_per_net.pop(net, None)

    def _release(self, conn: _Guarded) -> None:
        self.open -= 1
        if conn.evicted:
            self.dying -= 1
        self._waiting.pop(conn, None)
        if conn.pending:
            conn.pending = False
            self._drop_pending(conn.net)
        left = self.per_client.get(conn.client, 1) - 1
        if left > 0:
            self.per_client[conn.client] = left
        else:
            self.per_client.pop(conn.client, None)
        left = self.per_net.get(conn.net, 1) - 1
        if left > 0:
            self.per_net[conn.net] = left
        else:
            self.per_net.pop(conn.net, None)

    # -- hooks for the app's middleware (``request.protocol`` is aiohttp's protocol) --
    def request_started(self, protocol: asyncio.BaseProtocol | None) -> None:
        conn = self._by_inner.get(protocol) if protocol is not None else None
        if conn is not None:
            conn.request_started()

    def request_finished(self, protocol: asyncio.BaseProtocol | None) -> None:
        conn = self._by_inner.get(protocol) if protocol is not None else None
        if conn is not None:
            conn.request_finished()

    def exception_handler(self, previous: Callable[..., Any] | None) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
        """An event-loop exception handler that folds running-out-of-descriptors reports.

        asyncio reports each failed ``accept()`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) with a
        traceback; this logs one line per ``log_interval`` instead.  Anything else goes
        to ``previous`` (or the loop's default handler).
        """
        def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if "out of system resource" in str(context.get("message", "")) and isinstance(exc, OSError):
                self.throttled.warning("accept", f"accept() failed: {exc.strerror or exc}; new connections wait")
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
        return handle
