"""The notary pool (client.pool) reads into one reused buffer.

It replaces asyncio's allocate-per-read path with :class:`asyncio.BufferedProtocol`;
these tests hold it to the same behaviour on real loopback sockets: answers larger
than the buffer arrive whole and in order, and two pool connections answering
together never mix their bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from typing import AsyncIterator, Awaitable, Callable


import client.pool as pool_mod
from client.pool import NotaryPool
from client.devtools import port_of, serving

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async with serving(run, ssl_ctx=ssl_ctx) as srv:
        yield port_of(srv)


def _answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


async def test_pool_answers_larger_than_its_read_buffer_arrive_whole_and_unmixed() -> None:
    """Two connections of one pool share its read buffer: answers several buffers long, sent
    at the same time in small pieces, each arrive whole on their own request."""
    bodies = {b"/a": os.urandom(3 * pool_mod.READ_BUFFER + 7), b"/b": os.urandom(2 * pool_mod.READ_BUFFER + 11)}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            data = _answer(bodies[head.split(b" ")[1]])
            for i in range(0, len(data), 5000):  # interleave the two connections' bytes
                writer.write(data[i:i + 5000])
                await writer.drain()
                await asyncio.sleep(0)

    pool = NotaryPool()
    try:
        async with tcp_server(answer) as port:
            for _ in range(2):  # the second round reuses both connections
                a, b = await asyncio.gather(pool.request("GET", f"http://127.0.0.1:{port}/a"),
                                            pool.request("GET", f"http://127.0.0.1:{port}/b"))
                assert (a.status, a.body) == (200, bodies[b"/a"])
                assert (b.status, b.body) == (200, bodies[b"/b"])
            assert pool.connections == 2
    finally:
        await pool.close()


async def test_pool_https_answer_larger_than_its_read_buffer() -> None:
    """Over TLS the pool's protocol sits under asyncio's SSL layer, which feeds it the same way."""
    import trustme

    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    body = os.urandom(4 * pool_mod.READ_BUFFER + 1)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(_answer(body))
            await writer.drain()

    pool = NotaryPool(ssl_context=client_ctx)
    try:
        async with tcp_server(answer, server_ctx) as port:
            for _ in range(2):
                got = await pool.request("GET", f"https://localhost:{port}/x")
                assert (got.status, got.body) == (200, body)
    finally:
        await pool.close()
