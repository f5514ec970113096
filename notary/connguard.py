"""Connection guard: deadlines and caps for the notary's TCP connections (slowloris defence).

Theory of operation.  aiohttp has no deadline for reading a request's head and
keeps an idle connection for about an hour, so a client that trickles header
bytes holds a socket (a file descriptor) for as long as it likes.  The guard
sits between the listening socket and aiohttp: :meth:`ConnectionGuard.protocol_factory`
wraps aiohttp's protocol factory, so every accepted connection passes through a
small :class:`asyncio.Protocol` that forwards bytes unchanged and keeps one
state per connection:

* **awaiting** a request head.  A new connection must deliver a complete head
  within ``head_timeout`` seconds of being accepted.  A kept-alive connection
  may stay silent for ``idle_timeout`` seconds after its last response; once
  the first byte of its next request arrives it has ``head_timeout`` seconds
  to complete the head.  Past the deadline the connection is aborted.
* **busy** while a request is being handled (from the moment the app's
  middleware sees the request until its handler returned).  Body reading and
  probing have their own deadlines (``body_timeout``, the probe scheduler).

A connection is refused at accept time, with a short JSON answer and a close,
when the client address (an IPv6 client by its /64) already holds
``max_per_client`` connections (429), or when the whole server holds its global
cap (503).  The global cap is the smaller of ``max_connections`` and the
process's file-descriptor limit minus ``fd_reserve`` (descriptors kept for
probes, DNS and the store), so the notary refuses new connections *before* it
runs out of descriptors and keeps serving the ones it has.  A trusted reverse
proxy (``--trusted-proxy``) is exempt from the per-client cap.  Every refusal
and every deadline close is counted; the log gets at most one line per kind
per ``log_interval`` seconds, never one per event.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable

from notary.core.addrpolicy import IPNetwork

__all__ = ["ConnLimits", "ConnectionGuard", "Throttled", "fd_cap", "raise_fd_limit"]

log = logging.getLogger("parallax.notary")


@dataclass(frozen=True, slots=True)
class ConnLimits:
    """Seconds and counts.  ``fd_reserve`` descriptors are kept out of the connection cap."""

    head_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_per_client: int = 32
    max_connections: int = 4096
    fd_reserve: int = 256
    backlog: int = 128
    log_interval: float = 10.0


def fd_cap(max_connections: int, fd_reserve: int, backlog: int) -> int:
    """The global connection cap under this process's ``RLIMIT_NOFILE`` soft limit (at least 8).

    Besides ``fd_reserve``, ``backlog`` descriptors stay free: asyncio accepts up to
    ``backlog`` connections in one go before any protocol (and so the guard) sees
    them, and a refused connection holds its descriptor until the next loop turn.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    reserve = min(fd_reserve, soft // 4)  # a tiny limit still leaves most of it for clients
    return min(max_connections, max(8, soft - reserve - backlog))


def raise_fd_limit(target: int = 65536) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``target`` (never above the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


class Throttled:
    """A log that writes at most one line per key per ``interval`` seconds, with the count it folded."""

    def __init__(self, logger: logging.Logger, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def warning(self, key: str, message: str) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._folded[key] = self._folded.get(key, 0) + 1
            return
        self._last[key] = now
        folded = self._folded.pop(key, 0)
        suffix = f" ({folded} more like it in the last {self.interval:g}s)" if folded else ""
        self.logger.warning("%s%s", message, suffix)


def _answer(status: int, phrase: str, code: str, reason: str) -> bytes:
    body = json.dumps({"error": code, "reason": reason}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_TOO_MANY_CLIENT = _answer(429, "Too Many Requests", "too_many_connections",
                           "this client address holds too many connections")
_TOO_MANY_GLOBAL = _answer(503, "Service Unavailable", "unavailable", "the notary is at its connection limit")


def _client_of(peer: Any) -> str:
    try:
        addr = ipaddress.ip_address(str(peer[0]).split("%")[0])
    except (TypeError, IndexError, ValueError):
        return "?"
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    if addr.version == 6:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class _Guarded(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol; enforces the head and idle deadlines."""

    def __init__(self, guard: "ConnectionGuard", factory: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.factory = factory
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.client = "?"
        self.counted = False
        self.busy = 0
        self.got_bytes = False
        self.fresh = True  # no request handled yet on this connection
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = _client_of(peer)
        refusal = self.guard._admit(self)
        if refusal is not None:
            try:
                transport.write(refusal)
            finally:
                transport.close()
            return
        self.counted = True
        self._arm(self.guard.limits.head_timeout)
        self.inner = self.factory()
        self.guard._by_inner[self.inner] = self
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return  # a refused connection: its bytes are dropped
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
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.busy or self.transport is None:
            return
        kind = "idle" if not self.fresh and not self.got_bytes else "head"
        self.guard.closed[kind] += 1
        self.guard.throttled.warning(
            f"close-{kind}",
            f"closed a connection from {self.client}: "
            + ("idle past the keep-alive deadline" if kind == "idle" else "request head not received in time"),
        )
        self.transport.abort()

    def request_started(self) -> None:
        self.busy += 1
        self._disarm()

    def request_finished(self) -> None:
        self.busy = max(0, self.busy - 1)
        if not self.busy:
            self.fresh = False
            self.got_bytes = False
            self._arm(self.guard.limits.idle_timeout)


class ConnectionGuard:
    """Counts connections per client and in total; builds the guarded protocol factory.

    ``trusted`` networks (reverse proxies) are exempt from the per-client cap.
    ``open``, ``refused`` and ``closed`` are live counters (for metrics and tests).
    """

    def __init__(self, limits: ConnLimits = ConnLimits(), *, trusted: tuple[IPNetwork, ...] = ()) -> None:
        self.limits = limits
        self.trusted = trusted
        self.max_connections = fd_cap(limits.max_connections, limits.fd_reserve, limits.backlog)
        self.open = 0
        self.per_client: dict[str, int] = {}
        self.refused = {"client": 0, "global": 0}
        self.closed = {"head": 0, "idle": 0}
        self.throttled = Throttled(log, limits.log_interval)
        self._by_inner: dict[asyncio.BaseProtocol, _Guarded] = {}

    def protocol_factory(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """Wrap aiohttp's protocol factory (``runner.server``) for ``loop.create_server``."""
        return lambda: _Guarded(self, factory)

    def _is_trusted(self, client: str) -> bool:
        try:
            addr = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(addr.version == n.version and addr in n for n in self.trusted)

    def _admit(self, conn: _Guarded) -> bytes | None:
        if self.open >= self.max_connections:
            self.refused["global"] += 1
            self.throttled.warning("refuse-global", f"refusing connections: {self.open} open (limit {self.max_connections})")
            return _TOO_MANY_GLOBAL
        held = self.per_client.get(conn.client, 0)
        if held >= self.limits.max_per_client and not self._is_trusted(conn.client):
            self.refused["client"] += 1
            self.throttled.warning(
                "refuse-client", f"refusing connections from {conn.client}: {held} open (limit {self.limits.max_per_client})"
            )
            return _TOO_MANY_CLIENT
        self.open += 1
        self.per_client[conn.client] = held + 1
        return None

    def _release(self, conn: _Guarded) -> None:
        self.open -= 1
        left = self.per_client.get(conn.client, 1) - 1
        if left > 0:
            self.per_client[conn.client] = left
        else:
            self.per_client.pop(conn.client, None)

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
