"""The client never follows a redirect (issue 8, item 10).

A real loopback "notary" answers every request with a 3xx pointing at another local listener
(the canary, a plain TCP server that counts connections).  Whatever the client does (the fan-out
of ``verify_with_notaries``, with its own session or the caller's, the identity fetch,
``parallax notary-info URL``, ``parallax conformance``), the canary must see nothing, and the
redirect must be reported as a bad answer (``redirect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from client.api import verify_with_notaries
from client.bundle import Bundle
from client.cli import main
from client.cluster import local_cluster
from client.conformance import run_conformance
from client.devtools import StaticResolver, make_cert_context, tls_site
from client.devtools import port_of, serving

HOST = "localhost"
RESOLVER = StaticResolver({HOST: ["127.0.0.1"]})
STATUSES = [301, 302, 303, 307, 308]


class Canary:
    """A TCP listener that must never be contacted: counts connections and bytes received."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(Exception):
            self.received += await asyncio.wait_for(reader.read(65536), 1)
        writer.close()


@contextlib.asynccontextmanager
async def canary() -> AsyncIterator[Canary]:
    c = Canary()
    async with serving(c.handle) as server:
        c.port = port_of(server)
        yield c


@contextlib.asynccontextmanager
async def redirector(status: int, to: str, *, only: str | None = None,
                     upstream: str | None = None) -> AsyncIterator[str]:
    """An HTTP server answering ``status`` with ``Location: to`` (for path ``only``, else every path).

    Other paths are forwarded to ``upstream`` (a real notary), without following anything.
    """
    async def handle(request: web.Request) -> web.StreamResponse:
        if only is None or request.path == only:
            return web.Response(status=status, headers={"Location": to + request.path_qs})
        assert upstream is not None
        async with aiohttp.ClientSession() as s:
            async with s.request(request.method, upstream + request.path_qs, data=await request.read(),
                                 headers={"Content-Type": "application/json"}, allow_redirects=False) as r:
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def site_ctx() -> ssl.SSLContext:
    return make_cert_context(HOST, org="Parallax redirect test site")


@pytest.fixture
async def site(site_ctx):
    async with tls_site(site_ctx) as s:
        yield s


@pytest.fixture
async def cluster3(tmp_path: Path):
    async with local_cluster(3, tmp_path, resolver=RESOLVER) as c:
        yield c


def with_url(bundle: Bundle, i: int, url: str) -> Bundle:
    entries = list(bundle.notaries)
    entries[i] = replace(entries[i], url=url)
    return Bundle(tuple(entries))


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("own_session", [True, False])
async def test_fanout_never_follows_a_notary_redirect(status: int, own_session: bool, site, cluster3) -> None:
    async with canary() as c, redirector(status, f"http://127.0.0.1:{c.port}") as url:
        bundle = with_url(cluster3.bundle, 0, url)
        # A caller's session (as the browser helper passes) follows redirects by default: still not followed.
        session = None if own_session else aiohttp.ClientSession()
        try:
            v = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", site.port),
                                           wait_all=True, timeout=5, session=session)
        finally:
            if session is not None:
                await session.close()
        await asyncio.sleep(0.05)  # let a stray connection, if any, reach the canary
    assert c.connections == 0 and c.received == b""
    r = v.results[0]
    assert r.result == "invalid" and not r.counted
    assert r.reason.startswith("redirect:") and f"HTTP {status}" in r.reason
    assert [x.result for x in v.results[1:]] == ["agrees", "agrees"] and v.status == "consistent"


async def test_identity_fetch_redirect_is_a_bad_answer(site, cluster3) -> None:
    """Observe answered correctly (forwarded to the real notary), GET /v1/notary redirected."""
    real = cluster3.bundle.notaries[0].url
    async with canary() as c, redirector(307, f"http://127.0.0.1:{c.port}", only="/v1/notary", upstream=real) as url:
        v = await verify_with_notaries(HOST, site.port, bundle=with_url(cluster3.bundle, 0, url),
                                       connect_to=("127.0.0.1", site.port), wait_all=True, timeout=5)
        await asyncio.sleep(0.05)
    assert c.connections == 0
    assert v.results[0].result == "invalid" and "GET /v1/notary answered HTTP 307" in v.results[0].reason


@pytest.mark.parametrize("status", [302, 307, 308])
async def test_notary_info_url_never_follows_a_redirect(status: int, capsys: pytest.CaptureFixture[str]) -> None:
    async with canary() as c, redirector(status, f"http://127.0.0.1:{c.port}") as url:
        code = await asyncio.to_thread(main, ["notary-info", url, "--timeout", "5"])
        await asyncio.sleep(0.05)
    cap = capsys.readouterr()
    assert c.connections == 0
    assert code == 69 and cap.out == "" and len(cap.err.strip().splitlines()) == 1
    assert "redirect" in cap.err and f"HTTP {status}" in cap.err


async def test_conformance_never_follows_a_redirect() -> None:
    async with canary() as c, redirector(307, f"http://127.0.0.1:{c.port}") as url:
        results = await run_conformance(url, timeout=5)
        await asyncio.sleep(0.05)
    assert c.connections == 0
    assert results[0].name == "identity" and results[0].status == "fail"
    assert "redirect (HTTP 307" in results[0].detail
    assert all(r.status != "pass" for r in results if r.name.startswith(("identity", "observe", "refuse")))
    assert json.dumps([r.to_json() for r in results])  # serialisable, one line each
