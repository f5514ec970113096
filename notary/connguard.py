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
import socket
from typing import Any, Callable

# The guard lives in two parts; this module is its public face and holds the accept loop.
from notary.connguard_limits import (
    _TOO_MANY_CLIENT as _TOO_MANY_CLIENT,
    _TOO_MANY_GLOBAL as _TOO_MANY_GLOBAL,
    _TOO_MANY_NET as _TOO_MANY_NET,
    ConnLimits,
    Throttled,
    _answer as _answer,
    _client_of as _client_of,
    fd_cap,
    raise_fd_limit,
)
from notary.connguard_state import EVICT_SCAN as EVICT_SCAN
from notary.connguard_state import ConnectionGuard, _Guarded as _Guarded, log as log

__all__ = ["Acceptor", "ConnLimits", "ConnectionGuard", "Throttled", "fd_cap", "raise_fd_limit"]


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
