"""The notary connection pool of :mod:`client.pool`: :class:`NotaryPool` and its bookkeeping.

A request takes an idle connection to its origin or opens one (TLS with the pool's context),
at most ``limit`` (:data:`LIMIT`) connections in all; idle connections are kept
``keepalive`` (:data:`KEEPALIVE`) seconds, swept every ``keepalive / 2`` seconds; a request
is bounded by ``deadline`` (:data:`REQUEST_DEADLINE`) seconds (one watchdog timer per pool
for the requests in flight) and its answer by ``max_body`` bytes; a request whose reused
connection closed before any byte of the answer is sent once more, on a new connection.  The connection
itself (one request at a time, draining an abandoned answer) is :mod:`client._pool_conn`; the
theory of operation is in :mod:`client.pool`, the public module that re-exports these names.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections import deque

from yarl import URL

from client._pool_conn import READ_BUFFER, ConnectionClosed, _Conn
from client.http1 import HttpResponse, encode_request
from client.transport import MAX_RESPONSE_BYTES
from notary.eventloop import TIMER_SLACK

__all__ = ["NotaryPool", "KEEPALIVE", "LIMIT", "REQUEST_DEADLINE"]

#: Seconds an idle connection is kept open: below a notary's own idle limit (30 s,
#: docs/protocol.md section 10.3), so the client usually closes first.
KEEPALIVE = 20.0
#: Connections a pool holds at most (all origins together).
LIMIT = 100
#: Seconds any one request may take, whatever its caller does (a backstop; callers time out sooner).
REQUEST_DEADLINE = 60.0


@functools.lru_cache(maxsize=512)
def _origin(url: str) -> tuple[tuple[str, str, int], str, str]:
    """((scheme, host, port), Host header value, request target) of an http(s) URL.

    The host is IDNA-encoded and the path and query percent-encoded (``yarl``, as aiohttp
    does), so a bundle's non-ASCII notary URL is asked as it would be by any HTTP client.
    """
    try:
        u = URL(url)
        scheme, host, port = u.scheme.lower(), u.raw_host, u.port
    except (ValueError, UnicodeError):
        raise ValueError(f"not an http(s) URL: {url!r}") from None
    if scheme not in ("http", "https") or not host or port is None:
        raise ValueError(f"not an http(s) URL: {url!r}")
    authority = f"[{host}]" if ":" in host else host
    if not u.is_default_port():
        authority += f":{port}"
    return (scheme, host, port), authority, u.raw_path_qs or "/"


@functools.lru_cache(maxsize=1)
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # loads the CA store once (tens of ms): cached


class NotaryPool:
    """A keep-alive HTTP/1.1 connection pool (a :class:`~client.transport.Transport`); see the module docstring.

    ``ssl_context`` is used for ``https`` URLs (default: the system's CA store,
    host names checked).  ``limit`` connections at most, ``keepalive`` seconds
    idle, answers of at most ``max_body`` bytes.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, limit: int = LIMIT,
                 keepalive: float = KEEPALIVE, max_body: int = MAX_RESPONSE_BYTES,
                 deadline: float = REQUEST_DEADLINE) -> None:
        self._ssl = ssl_context
        self.limit, self.keepalive, self.max_body, self.deadline = limit, keepalive, max_body, deadline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._all: set[_Conn] = set()
        self._draining: set[_Conn] = set()  # finishing the answer to an abandoned request
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        # Connections with a request in flight -> loop time its deadline passes; one watchdog timer.
        self._inflight: dict[_Conn, float] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        # Every connection reads into this one buffer: all run on the pool's one event loop, and
        # each read is copied out before the next (_Conn.buffer_updated).
        self._rview = memoryview(bytearray(READ_BUFFER))
        self.closed = False

    @property
    def connections(self) -> int:
        """Connections open or opening now (idle, busy or draining)."""
        return len(self._all) + self._opening

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      content_type: str | None = None) -> HttpResponse:
        """Send one request and return the whole response (a 3xx too: never followed)."""
        key, authority, target = _origin(url)
        data = encode_request(method, authority, target, body, content_type)
        loop = asyncio.get_running_loop()
        self._bind(loop)
        expires = loop.time() + self.deadline  # a backstop: callers set their own, shorter, timeouts
        if self.closed:
            raise ConnectionError("the notary connection pool is closed")
        attempts: tuple[int, ...] = (1, 2)
        conn = self._take_idle(key)
        if conn is not None:  # the usual case: a kept-alive connection, bounded by the watchdog alone
            try:
                return await conn.send(data, self.max_body, expires)
            except ConnectionClosed as exc:
                if not exc.empty:
                    raise
            attempts = (2,)  # it was stale: sent once more, on a newly opened connection
        async with asyncio.timeout_at(expires):  # waiting for a slot and opening a connection are bounded too
            for attempt in attempts:
                if self.closed:
                    raise ConnectionError("the notary connection pool is closed")
                conn, reused = await self._acquire(key, fresh=attempt == 2)
                try:
                    return await conn.send(data, self.max_body, expires)
                except ConnectionClosed as exc:
                    if not (reused and exc.empty and attempt == 1):
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connections belong to the loop that opened them: used from another loop (a pool kept
        across two ``asyncio.run`` calls), the pool forgets them (closing what can still be
        closed) and starts afresh."""
        if self._loop is loop:
            return
        if self._loop is not None:
            for conn in list(self._all):
                conn.closed = True
                if conn.transport is not None:
                    with contextlib.suppress(Exception):  # the old loop may be closed
                        conn.transport.abort()
            self._all.clear()
            self._idle.clear()
            self._draining.clear()
            self._waiters.clear()
            self._opening = 0
            self._sweeper = None
            self._inflight.clear()
            self._watchdog = None
        self._loop = loop

    async def close(self) -> None:
        """Close every connection; later requests fail.  Idempotent."""
        self._bind(asyncio.get_running_loop())  # connections of an earlier, closed loop are only forgotten
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for conn in list(self._all):
            conn.close()
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)

    # -- connections ------------------------------------------------------------------------

    def _take_idle(self, key: tuple[str, str, int]) -> _Conn | None:
        """The most recently used idle connection to ``key`` that may be reused (others found on the way are closed)."""
        idle = self._idle.get(key)
        if idle:
            recent = (self._loop or asyncio.get_running_loop()).time() - self.keepalive
            while idle:
                conn = idle.pop()
                if conn.idle_since > recent and not conn.closed and conn.transport is not None \
                        and not conn.transport.is_closing():
                    return conn
                conn.close()
        return None

    async def _acquire(self, key: tuple[str, str, int], *, fresh: bool = False) -> tuple[_Conn, bool]:
        """An idle connection to ``key`` (reused: True) or a new one (always, if ``fresh``), within the limit."""
        while True:
            conn = None if fresh else self._take_idle(key)
            if conn is not None:
                return conn, True
            if self.connections < self.limit or self._evict_idle():
                return await self._open(key), False
            w = asyncio.get_running_loop().create_future()
            self._waiters.append(w)
            try:
                await w
            except asyncio.CancelledError:
                if w.done() and not w.cancelled():
                    self._wake()  # pass the freed slot on to the next waiter
                raise
            if self.closed:
                raise ConnectionError("the notary connection pool is closed")

    async def _open(self, key: tuple[str, str, int]) -> _Conn:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = (self._ssl or _default_tls()) if scheme == "https" else None
        self._opening += 1
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self, key), host, port, ssl=tls,
                                                   server_hostname=host if tls else None)
        finally:
            self._opening -= 1
            self._wake()
        if self.closed:
            conn.close()
            raise ConnectionError("the notary connection pool is closed")
        if not conn.closed:  # one lost already is gone from the pool (its send fails at once)
            self._all.add(conn)
        return conn

    def _idle_add(self, conn: _Conn) -> None:
        if self.closed:
            conn.close()
            return
        loop = self._loop or asyncio.get_running_loop()
        conn.idle_since = loop.time()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._sweeper is None:  # one timer per pool, not one per request
            self._sweeper = loop.call_later(self.keepalive / 2, self._sweep)
        self._wake()

    def _sweep(self) -> None:
        """Close connections idle for ``keepalive`` seconds; run again while any stay idle."""
        self._sweeper = None
        expired = asyncio.get_running_loop().time() - self.keepalive
        for idle in list(self._idle.values()):
            for conn in [c for c in idle if c.idle_since <= expired]:
                conn.close()
        if any(self._idle.values()) and not self.closed:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive / 2, self._sweep)

    def _watch(self, conn: _Conn, expires: float) -> None:
        """``conn`` carries a request whose deadline passes at loop time ``expires``."""
        self._inflight[conn] = expires
        if self._watchdog is None:
            self._watchdog = (self._loop or asyncio.get_running_loop()).call_at(expires, self._expire)

    def _expire(self) -> None:
        """The watchdog: fail the requests past their deadline; armed again for the earliest one left."""
        self._watchdog = None
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        for conn, expires in list(self._inflight.items()):
            if expires - now <= TIMER_SLACK:  # due (uvloop may run a timer a fraction of a ms early)
                self._inflight.pop(conn, None)
                conn.expire()
        if self._inflight and not self.closed:
            self._watchdog = loop.call_at(min(self._inflight.values()), self._expire)

    def _gone(self, conn: _Conn) -> None:
        self._all.discard(conn)
        self._draining.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake()

    def _evict_idle(self) -> bool:
        """Make room at the limit: close the longest-idle connection of any origin, else one
        still finishing an abandoned answer (a request waiting now matters more than a
        connection saved for later); False if every connection is in use."""
        oldest = min((c for idle in self._idle.values() for c in idle), key=lambda c: c.idle_since, default=None)
        if oldest is None:
            if not self._draining:
                return False
            oldest = next(iter(self._draining))
        oldest.close()
        return True

    def _wake(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return
