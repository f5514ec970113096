"""Reads into a reused buffer: the probe's connector (client.bufstream) and the notary pool (client.pool).

Both replace asyncio's allocate-per-read path with :class:`asyncio.BufferedProtocol`;
these tests hold them to the same behaviour on real loopback sockets: data larger
than the buffer arrives whole and in order, EOF and flow control still work, errors
are the same, and two pool connections answering together never mix their bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
from typing import AsyncIterator, Awaitable, Callable

import pytest

import client.bufstream as bufstream
import client.pool as pool_mod
from client.api import client_probe
from client.bufstream import open_buffered
from client.devtools import make_cert_context, tls_site
from client.pool import NotaryPool
from notary.core import Target
from notary.prober import Prober
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


BLOB = os.urandom(5 * bufstream.READ_BUFFER + 123)


async def test_open_buffered_reads_more_than_its_buffer_whole_then_eof() -> None:
    async def send_blob(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(5) == b"hello"
        writer.write(BLOB)
        await writer.drain()

    async with tcp_server(send_blob) as port:
        reader, writer = await open_buffered("127.0.0.1", port)
        try:
            writer.write(b"hello")
            await writer.drain()
            got = bytearray()
            while chunk := await reader.read(16 * 1024):
                got += chunk
            assert bytes(got) == BLOB
            assert reader.at_eof()
            assert writer.get_extra_info("peername")[0] == "127.0.0.1"
        finally:
            writer.transport.abort()


async def test_open_buffered_write_flow_control_with_a_slow_reader() -> None:
    """Megabytes written to a peer that reads late: drain() waits, then everything arrives."""
    digest: list[str] = []
    size = 8 << 20

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)
        digest.append(hashlib.sha256(await reader.readexactly(size)).hexdigest())
        writer.write(b"done")
        await writer.drain()

    data = os.urandom(size)
    async with tcp_server(slow) as port:
        reader, writer = await open_buffered("127.0.0.1", port)
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), 10)
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"done"
        finally:
            writer.transport.abort()
    assert digest == [hashlib.sha256(data).hexdigest()]


async def test_open_buffered_refused_like_open_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(ConnectionRefusedError):
            await open_buffered("127.0.0.1", port)


async def test_a_prober_over_open_buffered_sees_the_chain() -> None:
    """The notary's prober over this connector: the same result as over its own."""
    from notary.core import AddressPolicy, parse_networks

    policy = AddressPolicy(parse_networks(["127.0.0.0/8"]), None)
    async with tls_site(make_cert_context("localhost")) as site:
        target = Target.parse("127.0.0.1", site.port, "localhost")
        mine = (await Prober(policy, clock=lambda: 1, connector=open_buffered).probe(target))[0]
        theirs = (await Prober(policy, clock=lambda: 1).probe(target))[0]
        via_api = await client_probe(target)
    assert mine.status == theirs.status == via_api.status == "ok"
    assert mine.chain == theirs.chain and len(mine.chain) >= 1
    assert mine.spki_sha256 == theirs.spki_sha256 == via_api.spki_sha256


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
