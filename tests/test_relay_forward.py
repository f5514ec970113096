"""How the relay forwards to a gateway (notary.relay: its aiohttp client session).

The gateway here is a real loopback socket server that records the bytes it
gets and answers what the test says, so the tests see exactly what a relay
sends and how it treats each answer; the relay is a real create_app notary.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from client.devtools import StaticResolver, port_of, serving
from notary.config import NotaryConfig
from notary.core import AddressPolicy, SigningKey, ohttp, parse_networks
from notary.relay import RelayConfig
from notary.server import create_app

LOOPBACK = AddressPolicy(parse_networks(["127.0.0.0/8"]), None)
KEY_ID = "ed25519:" + "ab" * 32
OHTTP_RES = b"HTTP/1.1 200 OK\r\nContent-Type: message/ohttp-res\r\nContent-Length: 5\r\n\r\nhello"


class FakeGateway:
    """Records each request's head and body; answers ``answer`` (raw bytes) to each."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                writer.write(self.answer)
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def relay_running(relay: RelayConfig, tmp_path: Path, *, policy: AddressPolicy = LOOPBACK,
                        resolver: StaticResolver | None = None) -> AsyncIterator[str]:
    """A real notary relaying per ``relay``, on a loopback port; yields its ``.../v1/relay/`` URL prefix."""
    app = create_app(NotaryConfig(data_dir=tmp_path, policy=policy), SigningKey.generate(), relay=relay,
                     resolver=resolver)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1/relay/"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def relay_to(gateway_url: str, tmp_path: Path, *, policy: AddressPolicy = LOOPBACK,
                   resolver: StaticResolver | None = None, max_response_bytes: int = 4 << 20) -> AsyncIterator[str]:
    relay = RelayConfig({KEY_ID: gateway_url}, policy, rate_per_client=1000, burst_per_client=1000,
                        max_response_bytes=max_response_bytes)
    async with relay_running(relay, tmp_path, policy=policy, resolver=resolver) as base:
        yield base + KEY_ID


async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A gateway that reads the request and never answers."""
    with contextlib.suppress(Exception):
        await reader.read(1 << 16)
        await asyncio.sleep(10)
    writer.close()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, str, bytes]:
    async with session.post(url, data=body, headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE,
                                                     "X-Forwarded-For": "198.51.100.7", "Cookie": "who=me"}) as r:
        return r.status, r.content_type, await r.read()


async def test_the_forwarded_request_names_nothing_but_the_gateway_and_keeps_the_connection(tmp_path: Path) -> None:
    gw = FakeGateway(OHTTP_RES)
    async with serving(gw.handle) as server, aiohttp.ClientSession() as session:
        async with relay_to(f"http://127.0.0.1:{port_of(server)}", tmp_path) as url:
            for body in (b"\x01" * 100, b"\x02" * 100):
                assert await _post(session, url, body) == (200, "message/ohttp-res", b"hello")
    assert [b for _, b in gw.requests] == [b"\x01" * 100, b"\x02" * 100]  # the body unchanged
    assert gw.connections == 1  # kept alive: the second request reused the first connection
    for head, _ in gw.requests:
        lines = head.decode("ascii").split("\r\n")
        assert lines[0] == "POST /.well-known/ohttp-gateway HTTP/1.1"
        names = sorted(line.split(":", 1)[0].lower() for line in lines[1:] if line)
        assert names == ["content-length", "content-type", "host"]  # no client address, cookie, agent


async def test_a_gateway_host_name_is_resolved_and_checked_against_the_policy(tmp_path: Path) -> None:
    gw = FakeGateway(OHTTP_RES)
    # 127.0.0.2 refuses (the fake listens on 127.0.0.1 only): the next checked address is tried.
    resolver = StaticResolver({"gw.test": ["127.0.0.2", "127.0.0.1"]})
    async with serving(gw.handle) as server, aiohttp.ClientSession() as session:
        gateway = f"http://gw.test:{port_of(server)}"
        (tmp_path / "a").mkdir()
        async with relay_to(gateway, tmp_path / "a", resolver=resolver) as url:
            assert (await _post(session, url, b"x"))[0] == 200
        (tmp_path / "b").mkdir()
        # The default policy refuses loopback: the name resolves, but the relay must not connect.
        async with relay_to(gateway, tmp_path / "b", policy=AddressPolicy(), resolver=resolver) as url:
            status, _, body = await _post(session, url, b"x")
            assert status == 502 and b"bad_gateway" in body
    assert len(gw.requests) == 1


@pytest.mark.parametrize("answer,why", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: message/ohttp-res\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, b"larger than"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: message/ohttp-res\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\nx",
     b"compressed"),
    (b"garbage\r\n\r\n", b"bad_gateway"),
])
async def test_an_oversized_or_malformed_gateway_answer_is_a_502(tmp_path: Path, answer: bytes, why: bytes) -> None:
    gw = FakeGateway(answer)
    async with serving(gw.handle) as server, aiohttp.ClientSession() as session:
        async with relay_to(f"http://127.0.0.1:{port_of(server)}", tmp_path, max_response_bytes=4096) as url:
            status, ctype, body = await _post(session, url, b"x")
    assert status == 502 and ctype == "application/json" and why in body


async def test_a_gateway_redirect_is_passed_back_not_followed(tmp_path: Path) -> None:
    gw = FakeGateway(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:1/x\r\nContent-Length: 0\r\n\r\n")
    async with serving(gw.handle) as server, aiohttp.ClientSession() as session:
        async with relay_to(f"http://127.0.0.1:{port_of(server)}", tmp_path) as url:
            async with session.post(url, data=b"x", allow_redirects=False,
                                    headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE}) as r:
                assert r.status == 307 and "Location" not in r.headers
    assert len(gw.requests) == 1


async def test_a_silent_gateway_is_a_504_within_the_relay_timeout(tmp_path: Path) -> None:
    async with serving(mute) as server, aiohttp.ClientSession() as session:
        relay = RelayConfig({KEY_ID: f"http://127.0.0.1:{port_of(server)}"}, LOOPBACK, timeout=0.3,
                            rate_per_client=100, burst_per_client=100)
        async with relay_running(relay, tmp_path) as base:
            status, _, body = await _post(session, base + KEY_ID, b"x")
    assert status == 504 and b"gateway_timeout" in body


async def test_a_silent_gateway_delays_no_other_gateway(tmp_path: Path) -> None:
    """Forwards to one gateway are capped (``max_per_gateway``): the rest are a 503 at once, and a
    silent gateway's requests never hold the connections another gateway's requests need."""
    good = FakeGateway(OHTTP_RES)
    other = "ed25519:" + "cd" * 32
    async with serving(mute) as silent, serving(good.handle) as answering, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        relay = RelayConfig({KEY_ID: f"http://127.0.0.1:{port_of(silent)}",
                             other: f"http://127.0.0.1:{port_of(answering)}"}, LOOPBACK, timeout=3.0,
                            rate_per_client=1000, burst_per_client=1000)
        async with relay_running(relay, tmp_path) as base:
            # 64: as many as the relay's whole connection pool held before the per-gateway cap.
            stuck = [asyncio.create_task(_post(session, base + KEY_ID, b"x")) for _ in range(64)]
            done, _ = await asyncio.wait(stuck, timeout=1.0)
            busy = [t.result() for t in done]
            assert len(busy) == 64 - relay.max_per_gateway, len(busy)
            assert all(status == 503 and b"gateway_busy" in body for status, _, body in busy)
            status, _, body = await _post(session, base + other, b"y")
            assert status == 200 and body == b"hello"
            # ... answered while the silent gateway's requests were all still waiting.
            assert sum(not t.done() for t in stuck) == relay.max_per_gateway
            held = await asyncio.gather(*stuck)
            assert sorted({s for s, _, _ in held}) == [503, 504]


async def test_a_gateway_answer_of_another_kind_is_not_passed_on(tmp_path: Path) -> None:
    gw = FakeGateway(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nSet-Cookie: a=b\r\nContent-Length: 13\r\n\r\n"
                     b"<script>x()</")
    async with serving(gw.handle) as server, aiohttp.ClientSession() as session:
        async with relay_to(f"http://127.0.0.1:{port_of(server)}", tmp_path) as url:
            status, ctype, body = await _post(session, url, b"x")
    assert status == 502 and ctype == "application/json" and b"bad_gateway" in body
