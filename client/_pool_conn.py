"""One notary connection of :mod:`client.pool`: the per-connection HTTP/1.1 protocol.

:class:`_Conn` is an :class:`asyncio.BufferedProtocol` carrying at most one request at a
time, its answer parsed by :class:`~client.http1.ResponseParser`; :class:`ConnectionClosed`
is what a request gets when the connection closes before the answer is complete.  A request
abandoned after it was written leaves its connection to finish reading the answer for at
most :data:`DRAIN_SECONDS` seconds; bytes are read :data:`READ_BUFFER` bytes at a time into
the pool's one reused buffer.  The pool and its idle, limit and deadline bookkeeping are in
:mod:`client._notary_pool`; the theory of operation is in :mod:`client.pool`, the public
module that re-exports these names.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from client.http1 import HttpProtocolError, HttpResponse, ResponseParser

if TYPE_CHECKING:
    from client._notary_pool import NotaryPool

__all__ = ["ConnectionClosed", "DRAIN_SECONDS", "READ_BUFFER"]

#: Seconds a connection whose request was abandoned may take to finish the answer.
DRAIN_SECONDS = 2.0
#: Bytes read from a connection at a time (one buffer per pool, reused).
READ_BUFFER = 64 * 1024


class ConnectionClosed(ConnectionError):
    """The connection closed before the answer was complete (``empty``: before any byte of it)."""

    def __init__(self, message: str, *, empty: bool) -> None:
        super().__init__(message)
        self.empty = empty  # no byte of the answer had arrived


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
