"""The client's answer checks end to end: a real notary's genuinely signed answer, bent on the way.

Issue 8, items 15 and 16.  Three real notaries (client.cluster.local_cluster), a real TLS site, and a
loopback HTTP proxy (aiohttp) in front of one notary that either rewrites the SNI the client asked
for (the notary then signs an honest observation of another virtual host) or replays the first
answer it saw to every later call.  Without the client's SNI and nonce checks these answers
would count; with them they are ``invalid`` and never counted.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from client.api import verify_with_notaries
from client.bundle import Bundle
from client.cluster import LocalCluster, local_cluster
from client.devtools import StaticResolver, make_cert_context, tls_site

HOST = "localhost"
RESOLVER = StaticResolver({HOST: ["127.0.0.1"]})

Rewrite = Callable[[dict], dict]


class NotaryProxy:
    """A loopback HTTP proxy in front of one real notary; records what it forwards."""

    def __init__(self, upstream: str, *, rewrite: Rewrite | None = None, replay: bool = False) -> None:
        self.upstream = upstream
        self.rewrite = rewrite
        self.replay = replay
        self.nonces: list[str] = []
        self.first_answer: tuple[int, bytes] | None = None
        self.replayed = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "POST" and request.path == "/v1/observe":
            doc = json.loads(body)
            self.nonces.append(doc["nonce"])
            if self.replay and self.first_answer is not None:
                self.replayed += 1
                status, raw = self.first_answer
                return web.Response(status=status, body=raw, content_type="application/json")
            if self.rewrite:
                body = json.dumps(self.rewrite(doc)).encode()
        async with aiohttp.ClientSession() as s:
            async with s.request(request.method, self.upstream + request.path_qs, data=body or None,
                                 headers={"Content-Type": "application/json"}, allow_redirects=False) as r:
                raw = await r.read()
                status = r.status
        if request.method == "POST" and request.path == "/v1/observe" and self.first_answer is None:
            self.first_answer = (status, raw)
        return web.Response(status=status, body=raw, content_type="application/json")


@contextlib.asynccontextmanager
async def proxied(cluster: LocalCluster, i: int, **kw) -> AsyncIterator[tuple[NotaryProxy, Bundle]]:
    """Notary ``i`` reached through a NotaryProxy; the bundle names the proxy's URL for it."""
    entries = list(cluster.bundle.notaries)
    proxy = NotaryProxy(entries[i].url, **kw)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    proxy.url = f"http://127.0.0.1:{port}"
    entries[i] = replace(entries[i], url=proxy.url)
    try:
        yield proxy, Bundle(tuple(entries))
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def site_ctx() -> ssl.SSLContext:
    # One certificate for every SNI: the key is the same whatever virtual host is asked for, so
    # only the SNI check can tell a wrong-SNI observation apart.
    return make_cert_context(HOST, org="Parallax SNI test site")


@pytest.fixture
async def site(site_ctx):
    async with tls_site(site_ctx) as s:
        yield s


@pytest.fixture
async def cluster3(tmp_path: Path):
    async with local_cluster(3, tmp_path, resolver=RESOLVER) as c:
        yield c


def other_sni(doc: dict) -> dict:
    for t in doc["targets"]:
        t["sni"] = "other-vhost.localhost"
    return doc


# -- item 15: an honest observation made with another SNI does not count ------------------------------

async def test_observation_made_with_another_sni_is_not_counted(site, cluster3) -> None:
    async with proxied(cluster3, 0, rewrite=other_sni) as (proxy, bundle):
        v = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", site.port),
                                       wait_all=True, timeout=5)
    assert proxy.nonces, "the proxied notary was asked"
    r = v.results[0]
    assert r.result == "invalid" and not r.counted, r.reason
    assert "SNI 'other-vhost.localhost'" in r.reason
    assert [x.result for x in v.results[1:]] == ["agrees", "agrees"]
    assert v.agreeing == 2 and v.status == "consistent"


async def test_wrong_sni_answers_cannot_make_a_quorum(site, cluster3) -> None:
    # Two of three notaries answer for another SNI: without the SNI check they would be 3/3 agreeing.
    async with proxied(cluster3, 0, rewrite=other_sni) as (_, b1):
        cluster3.bundle = b1
        async with proxied(cluster3, 1, rewrite=other_sni) as (_, bundle):
            v = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", site.port),
                                           wait_all=True, timeout=5)
    assert [x.result for x in v.results] == ["invalid", "invalid", "agrees"]
    assert v.agreeing == 1 and v.status == "insufficient" and not v.ok


async def test_explicit_sni_is_checked_against_the_answer(site, cluster3) -> None:
    # The client asks for SNI www.localhost; the proxy turns it back into the default SNI (the host).
    def default_sni(doc: dict) -> dict:
        for t in doc["targets"]:
            t.pop("sni", None)
        return doc

    async with proxied(cluster3, 2, rewrite=default_sni) as (_, bundle):
        v = await verify_with_notaries(HOST, site.port, bundle=bundle, sni="www.localhost",
                                       connect_to=("127.0.0.1", site.port), wait_all=True, timeout=5)
    assert [x.result for x in v.results] == ["agrees", "agrees", "invalid"]
    assert "SNI 'localhost'" in v.results[2].reason


# -- item 16: a fresh random nonce per call; a replayed answer is refused -----------------------------

async def test_every_call_draws_a_new_random_nonce(site, cluster3) -> None:
    async with proxied(cluster3, 0) as (proxy, bundle):
        for _ in range(4):
            v = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", site.port),
                                           wait_all=True, timeout=5)
            assert v.status == "consistent", v.summary
    assert len(proxy.nonces) == 4
    assert len(set(proxy.nonces)) == 4, proxy.nonces
    for n in proxy.nonces:
        # base64url, at least 128 bits (22 characters) of it
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,128}", n), n
    # Not a counter or a timestamp: no two nonces share a long common prefix.
    prefixes = {n[:8] for n in proxy.nonces}
    assert len(prefixes) == 4


async def test_replayed_answer_from_an_earlier_call_is_refused(site, cluster3) -> None:
    async with proxied(cluster3, 0, replay=True) as (proxy, bundle):
        first = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", site.port),
                                           wait_all=True, timeout=5)
        assert first.results[0].result == "agrees" and first.results[0].counted
        second = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", site.port),
                                            wait_all=True, timeout=5)
    assert proxy.replayed == 1 and len(proxy.nonces) == 2 and proxy.nonces[0] != proxy.nonces[1]
    r = second.results[0]
    assert r.result == "invalid" and not r.counted
    assert "nonce" in r.reason and "replayed" in r.reason
    assert second.agreeing == 2


async def test_replayed_answers_cannot_make_a_quorum(site, cluster3) -> None:
    # Two of three notaries replay their first answers: the second call has one fresh agreement.
    async with proxied(cluster3, 0, replay=True) as (p0, b0):
        cluster3.bundle = b0
        async with proxied(cluster3, 1, replay=True) as (p1, bundle):
            kw: dict[str, Any] = dict(bundle=bundle, connect_to=("127.0.0.1", site.port), wait_all=True, timeout=5)
            assert (await verify_with_notaries(HOST, site.port, **kw)).status == "consistent"
            v = await verify_with_notaries(HOST, site.port, **kw)
    assert p0.replayed == p1.replayed == 1
    assert [x.result for x in v.results] == ["invalid", "invalid", "agrees"]
    assert v.status == "insufficient" and not v.ok
