"""Answers that arrive in many small TCP segments (as over a real network) are read whole.

A relay on loopback sits in front of each real notary and passes the notary's
answer on in 1,400-byte pieces, 2 ms apart.  Reading only what happened to be
buffered made every notary "unreachable" (truncated JSON): a regression test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import AsyncIterator

from client.api import verify_with_notaries
from client.bundle import Bundle
from client.cluster import local_cluster
from client.devtools import make_cert_context, tls_site


@contextlib.asynccontextmanager
async def segmenting_relay(port: int) -> AsyncIterator[int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", port)

        async def up() -> None:
            while data := await r.read(65536):
                uw.write(data)
                await uw.drain()

        async def down() -> None:
            while data := await ur.read(65536):
                for i in range(0, len(data), 1400):
                    w.write(data[i:i + 1400])
                    await w.drain()
                    await asyncio.sleep(0.002)
            w.close()

        await asyncio.gather(up(), down(), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_answers_split_into_segments_are_read_whole(tmp_path) -> None:
    async with tls_site(make_cert_context("127.0.0.1")) as site, local_cluster(3, tmp_path) as cluster:
        async with contextlib.AsyncExitStack() as stack:
            entries = []
            for e in cluster.bundle.notaries:
                port = await stack.enter_async_context(segmenting_relay(int(e.url.rsplit(":", 1)[1])))
                entries.append(dataclasses.replace(e, url=f"http://127.0.0.1:{port}"))
            verdict = await verify_with_notaries("127.0.0.1", site.port, bundle=Bundle(tuple(entries)), wait_all=True)
    assert verdict.status == "consistent", [r.reason for r in verdict.results]
    assert verdict.agreeing == 3
