"""The TCP connector of the client's own probe: asyncio streams that read into a reused buffer.

:class:`notary.prober.Prober` talks to a target over an ``(asyncio.StreamReader,
asyncio.StreamWriter)`` pair from its ``connector``.  The default,
:func:`asyncio.open_connection`, uses a plain protocol, for which asyncio
allocates a fresh 256 KiB ``bytes`` for every read: the C library maps and
unmaps that memory each time (three system calls and a page fault per read,
on every check).  :func:`open_buffered` returns the same pair, but the
transport receives into one :data:`READ_BUFFER`-byte buffer per connection
(:class:`asyncio.BufferedProtocol`) and hands a copy of what arrived to the
stream's own protocol, so the reader, the writer, flow control and EOF behave
exactly as with :func:`asyncio.open_connection`.
"""

from __future__ import annotations

import asyncio

__all__ = ["open_buffered", "READ_BUFFER", "STREAM_LIMIT"]

#: Bytes received at a time (the prober reads the handshake in 16 KiB pieces).
READ_BUFFER = 16 * 1024
#: The StreamReader's buffer limit, as :mod:`notary.prober` asks of :func:`asyncio.open_connection`.
STREAM_LIMIT = 64 * 1024


class _Buffered(asyncio.BufferedProtocol):
    """Receives into one buffer and feeds the bytes to a :class:`asyncio.StreamReaderProtocol`."""

    __slots__ = ("inner", "view")

    def __init__(self, inner: asyncio.StreamReaderProtocol) -> None:
        self.inner = inner
        self.view = memoryview(bytearray(READ_BUFFER))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.inner.data_received(bytes(self.view[:nbytes]))

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def open_buffered(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_connection(host, port, limit=STREAM_LIMIT)`` (same errors), reading into a reused buffer."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: _Buffered(protocol), host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
