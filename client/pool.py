"""Kept-alive HTTP/1.1 connections to notaries: the client's default :class:`~client.transport.Transport`.

A check asks five or so notaries; an aiohttp request costs more CPU than
reading and verifying the notary's answer, and a new connection per check
costs more than the check's own TLS probe.  :class:`NotaryPool` keeps
connections to each notary open between checks and speaks just enough HTTP/1.1
(:mod:`client.http1`) over an :class:`asyncio.BufferedProtocol`.

Theory of operation
-------------------
* One request at a time per connection.  A request takes an idle connection
  to the same origin (scheme, host, port; most recently used first) or opens
  one: TCP, then for ``https`` TLS with the pool's context (by default
  :func:`ssl.create_default_context`: certificate and host name verified).
* At most ``limit`` connections in all (open, opening or finishing an
  abandoned answer); at the limit an idle connection to another origin is
  closed, else one finishing an abandoned answer, or the request waits for
  one to be freed.
* A connection idle for ``keepalive`` seconds is never reused and is closed
  (a sweep every ``keepalive / 2`` seconds); one the server closes is dropped
  at once (its EOF arrives while idle).
* Stale connection race: a server may close an idle connection just as a
  request is written to it.  When a *reused* connection closes before a single
  byte of the answer arrived, the request is sent once more on a newly opened
  connection (never another idle one), never more often.  Every request the client makes is safe to
  resend: ``GET /v1/notary``, ``POST /v1/observe`` (read-only for the notary;
  the answer is bound to the request's own nonce, so a second answer to the
  same request is just as good) and the relay's encrypted ``POST`` (HPKE: the
  gateway decrypts and answers it again, with the same key material).
* Timeouts are the caller's (``asyncio.timeout`` around :meth:`request`), with
  a backstop of ``deadline`` seconds (:data:`REQUEST_DEADLINE`) per request: a
  request still unanswered then fails with :class:`TimeoutError` (its
  connection is closed).  A request on a kept-alive connection (the usual case)
  is bounded by one watchdog timer per pool, armed for the earliest deadline of
  the requests in flight, not by a timer of its own; one that waits for a slot
  or opens a connection is bounded by ``asyncio.timeout`` as well.  A
  request cancelled after it was written (a timeout, or an early decision
  that no longer needs that notary) leaves its connection to finish reading
  the answer for at most :data:`DRAIN_SECONDS`; a complete answer returns the
  connection to the pool (no new handshake next time), else it is closed.
* Redirects are responses (never followed); bodies over ``max_body`` bytes,
  malformed answers and compressed ones are :class:`~client.http1.HttpProtocolError`.

:func:`shared_pool` hands out one pool per running event loop; it is closed by
:func:`close_shared_pool`, or by itself when the loop shuts down its async
generators (``asyncio.run`` does that before closing the loop), so a script
that never closes it leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import weakref
from collections import deque
from typing import AsyncGenerator, cast

from yarl import URL

from client.http1 import HttpProtocolError, HttpResponse, ResponseParser, encode_request
from client.transport import MAX_RESPONSE_BYTES
from notary.eventloop import TIMER_SLACK

__all__ = ["NotaryPool", "ConnectionClosed", "shared_pool", "close_shared_pool", "KEEPALIVE", "LIMIT", "DRAIN_SECONDS",
           "REQUEST_DEADLINE", "READ_BUFFER"]

#: Seconds an idle connection is kept open: below a notary's own idle limit (30 s,
#: docs/protocol.md section 10.3), so the client usually closes first.
KEEPALIVE = 20.0
#: Connections a pool holds at most (all origins together).
LIMIT = 100
#: Seconds a connection whose request was abandoned may take to finish the answer.
DRAIN_SECONDS = 2.0
#: Seconds any one request may take, whatever its caller does (a backstop; callers time out sooner).
REQUEST_DEADLINE = 60.0
#: Bytes read from a connection at a time (one buffer per pool, reused).
READ_BUFFER = 64 * 1024


class ConnectionClosed(ConnectionError):
    """The connection closed before the answer was complete (``empty``: before any byte of it)."""

    def __init__(self, message: str, *, empty: bool) -> None:
        super().__init__(message)
        self.empty = empty  # no byte of the answer had arrived


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


class _Conn(asyncio.BufferedProtocol):
    """One connection: at most one request in flight, parsed by :class:`ResponseParser`.

    Bytes are received into the pool's one read buffer (:data:`READ_BUFFER` bytes, reused:
    a plain protocol makes asyncio allocate a fresh 256 KiB buffer for every read, which
    the C library maps and unmaps each time) and copied out at once.
    """

    def __init__(self, pool: "NotaryPool", key: tuple[str, str, int]) -> None:
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.waiter: asyncio.Future[HttpResponse] | None = None
        self.timer: asyncio.TimerHandle | None = None  # drain deadline of an abandoned request
        self.idle_since = 0.0  # loop time it was last returned to the pool
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (asyncio's, or uvloop's, which is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.pool._rview

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.pool._rview[:nbytes]))

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes nobody asked for: this connection's framing cannot be trusted
            self.close()
            return
        try:
            parser.feed(data)
        except HttpProtocolError as exc:
            self._finish(exc)
            return
        if parser.done:
            self._finish(None)

    def eof_received(self) -> bool | None:
        parser = self.parser
        if parser is not None:
            try:
                parser.feed_eof()
            except HttpProtocolError as exc:
                self._finish(ConnectionClosed(str(exc), empty=not parser.received))
                return None
            self._finish(None)
        self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.parser is not None:
            empty = not self.parser.received
            self._finish(ConnectionClosed(f"connection lost: {exc}" if exc else "connection closed by the server", empty=empty))
        self.closed = True
        self.pool._gone(self)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool._gone(self)

    def _finish(self, exc: Exception | None) -> None:
        parser, waiter = self.parser, self.waiter
        self.parser = self.waiter = None
        self.pool._draining.discard(self)
        self.pool._inflight.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if exc is None and parser is not None and parser.keep_alive and not self.closed:
            self.pool._idle_add(self)
        else:
            self.close()
        if waiter is not None and not waiter.done():
            if exc is not None:
                waiter.set_exception(exc)
            else:
                assert parser is not None and parser.response is not None
                waiter.set_result(parser.response)

    async def send(self, data: bytes, max_body: int, expires: float) -> HttpResponse:
        """Write one request and wait for its answer; it fails with TimeoutError at loop time ``expires``."""
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            # Lost after it was taken or opened (a notary refusing at its connection cap answers and
            # closes at once): asyncio would drop the write and wait for the deadline, uvloop raise.
            raise ConnectionClosed("connection closed by the server", empty=True)
        loop = self.pool._loop or asyncio.get_running_loop()  # the loop the pool is bound to (request)
        self.parser = ResponseParser(max_body=max_body)
        waiter = self.waiter = loop.create_future()
        self.pool._watch(self, expires)
        self.transport.write(data)
        try:
            response: HttpResponse = await waiter
            return response
        except asyncio.CancelledError:
            # Abandoned: let it finish, bounded by the drain deadline (no longer by the watchdog).
            # Only if the connection still carries *this* request: its answer may have arrived,
            # and another request taken the connection, just before this task was cancelled.
            if self.waiter is waiter and self.parser is not None and not self.closed:
                self.pool._inflight.pop(self, None)
                self.timer = loop.call_later(DRAIN_SECONDS, self.close)
                self.pool._draining.add(self)
            raise

    def expire(self) -> None:
        """The request in flight is past the pool's deadline: it fails with TimeoutError, the connection closes."""
        waiter = self.waiter
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError(f"no answer within the pool's deadline ({self.pool.deadline:g}s)"))


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


_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[NotaryPool, AsyncGenerator[None, None]]]" = (
    weakref.WeakKeyDictionary()
)


async def _closer(pool: NotaryPool) -> AsyncGenerator[None, None]:
    """Parked async generator: its ``finally`` runs at ``loop.shutdown_asyncgens()``."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await pool.close()


def shared_pool() -> NotaryPool:
    """The running loop's notary connection pool (created on first use; a closed one is replaced)."""
    loop = asyncio.get_running_loop()
    got = _pools.get(loop)
    if got is not None and not got[0].closed:
        return got[0]
    pool = NotaryPool()
    gen = _closer(pool)
    # Start the generator so the loop tracks it (asyncgen hooks) and closes it at shutdown.
    step = gen.asend(None)
    try:
        step.send(None)
    except StopIteration:
        pass
    _pools[loop] = (pool, gen)
    return pool


async def close_shared_pool() -> None:
    """Close the running loop's shared pool, if any (idempotent)."""
    got = _pools.pop(asyncio.get_running_loop(), None)
    if got is not None:
        await got[0].close()
        with contextlib.suppress(Exception):
            await got[1].aclose()
