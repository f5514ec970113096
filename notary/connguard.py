"""Connection guard: deadlines and caps for the notary's TCP connections (slowloris defence).

Theory of operation.  aiohttp has no deadline for reading a request's head and
keeps an idle connection for about an hour, so a client that trickles header
bytes holds a socket (a file descriptor) for as long as it likes.  The guard
sits between the listening socket and aiohttp: :class:`Acceptor` accepts
and admits each connection and wraps aiohttp's protocol, so every connection passes through a
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

Deadlines cost nothing per request: a state change only moves the connection's
deadline, and its one timer, never set further ahead than the shorter of the
two timeouts, re-arms itself for what is left when it fires early (see
``_Guarded._arm``), so a kept-alive connection answering thousands of requests
a second creates a timer every few seconds, not two per request.

Admission happens in :class:`Acceptor`, the listening socket's own accept
loop, before any transport exists: a refused connection gets a short JSON
answer written straight to the socket and is closed *at once*, so refusals never
hold descriptors (asyncio's own accept loop accepts ``backlog`` sockets per
wake-up and closes refused ones a loop turn later, which could run the process
out of descriptors).  A connection is refused when

* the client address (an IPv6 client by its /64) already holds
  ``max_per_client`` connections (429);
* the client's network (IPv4 /24, IPv6 /48) already holds ``max_pending_per_net``
  connections that have not yet delivered their first request head (429), so
  slow connections from many addresses of one network cannot fill the server;
* the whole server holds its global cap and no connection can be evicted (503).

At the global cap, the connection that has waited longest for a request head
(or idled longest between requests) is aborted to make room for the newcomer,
provided it has waited at least ``evict_after`` seconds and its network holds at
least two more connections than the newcomer's (so a client from a network with
few connections displaces one from a network with many, and connections from
many networks cannot evict each other to stay young); busy connections are
never evicted.  An evicted connection holds its descriptor until the next loop
turn; at most ``backlog`` of those exist at once (past that, newcomers get the
503).  The global cap is the smaller of ``max_connections`` and the process's
file-descriptor limit minus ``fd_reserve`` (descriptors kept for probes, DNS and
the store) and minus ``backlog`` (the evicted-but-not-yet-closed ones), so the
notary refuses new connections *before* it runs out of descriptors and keeps
serving the ones it has.  A trusted reverse proxy (``--trusted-proxy``) is
exempt from the per-client and per-network caps.  Every refusal, eviction and
deadline close is counted; the log gets at most one line per kind per
``log_interval`` seconds, never one per event, and never a client address
(addresses are logged only by the opt-in access log).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, cast

from notary.core.addrpolicy import IPNetwork, network_key
from notary.eventloop import TIMER_SLACK

__all__ = ["Acceptor", "ConnLimits", "ConnectionGuard", "Throttled", "fd_cap", "raise_fd_limit"]

log = logging.getLogger("parallax.notary")


@dataclass(frozen=True, slots=True)
class ConnLimits:
    """Seconds and counts.  ``fd_reserve`` descriptors are kept out of the connection cap.

    ``max_pending_per_net``: connections per IPv4 /24 or IPv6 /48 that have not yet
    delivered their first request head.  ``evict_after``: seconds a connection must
    have waited (for a head, or idle between requests) before it may be evicted to
    make room at the global cap.
    """

    head_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_per_client: int = 32
    max_pending_per_net: int = 64
    evict_after: float = 5.0
    max_connections: int = 4096
    fd_reserve: int = 256
    backlog: int = 128
    log_interval: float = 10.0


def fd_cap(max_connections: int, fd_reserve: int, backlog: int) -> int:
    """The global connection cap under this process's ``RLIMIT_NOFILE`` soft limit (at least 8).

    Besides ``fd_reserve``, ``backlog`` descriptors stay free for evicted connections,
    each of which holds its descriptor until the next loop turn (see :class:`Acceptor`).
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
_TOO_MANY_NET = _answer(429, "Too Many Requests", "too_many_connections",
                        "this client network holds too many connections awaiting a request")
_TOO_MANY_GLOBAL = _answer(503, "Service Unavailable", "unavailable", "the notary is at its connection limit")


EVICT_SCAN = 64  # waiting connections looked at per eviction (bounds the work of a refused newcomer)


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

    def __init__(self, limits: ConnLimits = ConnLimits(), *, trusted: tuple[IPNetwork, ...] = (),
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


ACCEPT_RETRY_DELAY = 1.0  # seconds without accepting after accept() ran out of descriptors or memory
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Acceptor:
    """The accept loop of one listening socket: admission by the guard before any transport exists.

    Accepts at most ``batch`` sockets per wake-up.  A refused socket gets its JSON
    answer with one non-blocking ``send`` (best effort) and is closed before the
    next ``accept``, so refusals hold no descriptor.  Admitted sockets are handed
    to ``loop.connect_accepted_socket`` with the guarded protocol.  ``close()``
    stops accepting and closes the listening socket (what ``aiohttp``'s site
    expects of ``_server``).
    """

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol], sock: socket.socket,
                 batch: int = 64) -> None:
        self.guard = guard
        self.factory = factory
        self.sock = sock
        self.batch = batch
        self.loop = asyncio.get_running_loop()
        self.sockets = (sock,)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retry: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._on_readable)

    def _resume(self) -> None:
        self._retry = None
        if self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(self.batch):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    continue  # ECONNABORTED and the like: that one connection is gone
                # Out of descriptors or memory: the socket stays readable, so stop watching it for
                # a second (like asyncio's own accept loop) instead of spinning.
                self.guard.throttled.warning("accept", f"accept() failed: {exc.strerror or exc}; new connections wait")
                self.loop.remove_reader(self.sock.fileno())
                self._retry = self.loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                return
            conn.setblocking(False)
            admitted = self.guard.admit(_client_of(peer), self.factory)
            if isinstance(admitted, bytes):
                try:
                    conn.send(admitted)
                except OSError:
                    pass
                conn.close()
                continue
            task = self.loop.create_task(self._connect(conn, admitted))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, proto: "_Guarded") -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: proto, conn)
        except Exception:  # noqa: BLE001 - the peer went away before its transport was built
            conn.close()
            if proto.counted:
                proto.connection_lost(None)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
