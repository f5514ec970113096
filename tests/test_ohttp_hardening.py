"""Review findings on the Oblivious HTTP gateway, relay and client (each reproduced on loopback first).

Real notary applications on loopback sockets throughout; the slow and vanishing
senders are raw TCP connections, as a hostile client would be.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from notary.config import NotaryConfig
from notary.core import AddressPolicy, SigningKey, bhttp, ohttp, parse_networks
from notary.relay import RelayConfig
from notary.server import create_app

LOOPBACK = AddressPolicy(parse_networks(["127.0.0.0/8", "::1/128"]), None)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def raw_post(url: str, path: str, ctype: str, declared: int, sent: bytes) -> tuple[asyncio.StreamReader,
                                                                                          asyncio.StreamWriter]:
    host, port = url[len("http://"):].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + sent)
    await writer.drain()
    return reader, writer


def relay_app(tmp_path: Path, gateways: dict[str, str], *, body_timeout: float = 10.0, gateway_rate: float = 20.0,
              gateway_burst: int = 40, trusted: tuple[str, ...] = ()) -> web.Application:
    d = tmp_path / "relay"
    d.mkdir(exist_ok=True)
    cfg = NotaryConfig(data_dir=d, name="relay", body_timeout=body_timeout, policy=LOOPBACK,
                       trusted_proxies=parse_networks(list(trusted)))
    return create_app(cfg, SigningKey.generate(), relay=RelayConfig.sized_for(
        gateways, LOOPBACK, gateway_rate=gateway_rate, gateway_burst=gateway_burst, body_timeout=body_timeout))


# -- F1: body read deadline, quiet disconnects ------------------------------------------------------

BODY_TIMEOUT = 1.0


@pytest.mark.parametrize("which", ["gateway", "relay"])
async def test_a_trickled_body_gets_400_body_timeout(tmp_path: Path, which: str) -> None:
    app = relay_app(tmp_path, {"ed25519:aa": "http://127.0.0.1:9"}, body_timeout=BODY_TIMEOUT)
    path = "/.well-known/ohttp-gateway" if which == "gateway" else "/v1/relay/ed25519:aa"
    async with serving(app) as url:
        reader, writer = await raw_post(url, path, ohttp.REQUEST_MEDIA_TYPE, 1000, b"\x00")
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BODY_TIMEOUT + 1)
            assert head.startswith(b"HTTP/1.1 400"), head
            assert b"body_timeout" in await asyncio.wait_for(reader.read(1000), 2)
        finally:
            writer.close()
        async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as r:
            assert r.status == 200  # still serving


async def test_a_client_that_disconnects_mid_body_is_not_logged_as_a_traceback(tmp_path: Path, caplog) -> None:
    app = relay_app(tmp_path, {"ed25519:aa": "http://127.0.0.1:9"}, body_timeout=5)
    caplog.set_level(logging.DEBUG)
    async with serving(app) as url:
        for path, ctype in (("/v1/observe", "application/json"), ("/.well-known/ohttp-gateway", ohttp.REQUEST_MEDIA_TYPE),
                            ("/v1/relay/ed25519:aa", ohttp.REQUEST_MEDIA_TYPE)):
            _, writer = await raw_post(url, path, ctype, 1000, b"x")
            await asyncio.sleep(0.2)
            writer.close()
        await asyncio.sleep(0.5)  # let the server notice the three disconnects
        async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as r:
            assert r.status == 200
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


# -- F2: rate-limit keys through the gateway and the relay ------------------------------------------

def gateway_app(tmp_path: Path, *, rate: float, burst: int, trusted: tuple[str, ...] = ()) -> tuple[web.Application,
                                                                                                   SigningKey]:
    d = tmp_path / "gateway"
    d.mkdir(exist_ok=True)
    key = SigningKey.generate()
    cfg = NotaryConfig(data_dir=d, name="gw", policy=LOOPBACK, rate_per_client=rate, burst_per_client=burst,
                       trusted_proxies=parse_networks(list(trusted)))
    return create_app(cfg, key), key


async def gateway_config(s: aiohttp.ClientSession, url: str) -> ohttp.KeyConfig:
    async with s.get(url + "/.well-known/ohttp-gateway") as r:
        return ohttp.decode_keys(await r.read())[0]


async def inner_identity_status(s: aiohttp.ClientSession, cfg: ohttp.KeyConfig, post_url: str,
                                headers: dict[str, str] | None = None) -> int:
    """POST an encapsulated ``GET /v1/notary``; the inner status (429 when the gateway limited it)."""
    enc, ctx = ohttp.encapsulate_request(cfg, bhttp.encode_request(bhttp.Request("GET", "https", "", "/v1/notary")))
    async with s.post(post_url, data=enc, headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE, **(headers or {})}) as r:
        if r.status != 200:
            return r.status  # refused by the relay itself (or the outer gateway request)
        return bhttp.decode_response(ohttp.decapsulate_response(ctx, await r.read())).status


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket_through_the_gateway(tmp_path) -> None:
    app, _ = gateway_app(tmp_path, rate=0.001, burst=2, trusted=("127.0.0.0/8",))
    async with serving(app) as url, aiohttp.ClientSession() as s:
        cfg = await gateway_config(s, url)
        post = url + "/.well-known/ohttp-gateway"
        a = [await inner_identity_status(s, cfg, post, {"X-Forwarded-For": "198.51.100.1"}) for _ in range(3)]
        assert a == [200, 200, 429]
        # Another client behind the same proxy is not starved, through the gateway as directly.
        assert await inner_identity_status(s, cfg, post, {"X-Forwarded-For": "198.51.100.2"}) == 200
        # The encrypted request cannot pick its own key: headers inside it are not consulted.
        async with s.get(url + "/v1/notary", headers={"X-Forwarded-For": "198.51.100.1"}) as r:
            assert r.status == 429  # the inner requests were charged to 198.51.100.1, once each


async def test_one_relay_client_cannot_use_up_the_relays_share_at_a_gateway(tmp_path) -> None:
    # The gateway allows the relay (one address) a burst of 16; the relay's clients are told apart by
    # X-Forwarded-For (the relay trusts loopback as its proxy, as one behind a load balancer would).
    gw_app, gw_key = gateway_app(tmp_path, rate=0.001, burst=16)
    async with serving(gw_app) as gw_url:
        r_app = relay_app(tmp_path, {gw_key.key_id: gw_url}, gateway_rate=0.001, gateway_burst=16,
                          trusted=("127.0.0.0/8",))
        async with serving(r_app) as relay_url, aiohttp.ClientSession() as s:
            cfg = await gateway_config(s, gw_url)
            post = f"{relay_url}/v1/relay/{gw_key.key_id}"
            a = [await inner_identity_status(s, cfg, post, {"X-Forwarded-For": "198.51.100.1"}) for _ in range(20)]
            assert a[0] == 200 and a[-1] == 429  # A is limited...
            assert a.count(200) < 16  # ...by the relay, before the gateway's bucket for the relay is empty
            assert await inner_identity_status(s, cfg, post, {"X-Forwarded-For": "198.51.100.2"}) == 200  # B is served


# -- F4: what a relay sees does not name the site -------------------------------------------------

@contextlib.asynccontextmanager
async def recording_relay(targets: dict[str, str], seen: list[tuple[int, int]]) -> AsyncIterator[str]:
    """A third-party RFC 9458 relay that records (request bytes, response bytes) of each forward."""
    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with aiohttp.ClientSession() as s, s.post(targets[request.match_info["gw"]], data=body,
                                                        headers={"Content-Type": request.content_type}) as r:
            answer = await r.read()
            seen.append((len(body), len(answer)))
            return web.Response(status=r.status, body=answer, headers={"Content-Type": r.content_type})

    app = web.Application()
    app.router.add_post("/relay/{gw}", forward)
    async with serving(app) as url:
        yield url


async def test_relay_sees_the_same_sizes_for_sites_of_different_names_and_chains(tmp_path: Path) -> None:
    from client.api import verify_with_notaries
    from client.cluster import local_cluster
    from client.devtools import StaticResolver, make_cert_context, tls_site

    short, long_ = "a.test", "a-much-longer-site-name-than-the-other.example.test"
    resolver = StaticResolver({short: ["127.0.0.1"], long_: ["127.0.0.1"]})
    small = make_cert_context(short, key_type="ecdsa", org="S")
    big = make_cert_context(long_, key_type="rsa", org="A longer organisation name for a bigger certificate")
    sizes: dict[str, list[tuple[int, int]]] = {short: [], long_: []}
    async with local_cluster(2, tmp_path / "c", resolver=resolver) as c, \
            tls_site(small) as s1, tls_site(big) as s2:
        targets = {e.key_id: e.url + "/.well-known/ohttp-gateway" for e in c.bundle.notaries}
        for host, site in ((short, s1), (long_, s2)):
            async with recording_relay(targets, sizes[host]) as base:
                v = await verify_with_notaries(host, site.port, bundle=c.bundle, connect_to=("127.0.0.1", site.port),
                                               wait_all=True, timeout=10, relay=base + "/relay/{key_id}")
            assert v.status == "consistent", v.summary
    assert len(sizes[short]) == len(sizes[long_]) == 2
    assert set(sizes[short]) == set(sizes[long_])  # same request size, same response bucket
    assert len(set(sizes[short])) == 1


def test_padding_rules_and_the_decoder_reads_padded_messages() -> None:
    from client.fanout import observe_body
    from notary.core import Target, canonical_encode

    longest = Target.parse("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, 65535)  # 253 bytes
    req = bhttp.encode_request(bhttp.Request("POST", "https", "notary.example:443", "/v1/observe",
                                             (("content-type", "application/json"),),
                                             canonical_encode(observe_body(longest, "n" * 32, max_age=86400, all_addresses=True))))
    assert bhttp.request_padded_size(len(req)) == bhttp.REQUEST_PAD_BYTES  # every Parallax request: one KiB
    assert bhttp.decode_request(bhttp.pad(req, 1024)).content == bhttp.decode_request(req).content
    assert bhttp.request_padded_size(1025) == 2048 and bhttp.request_padded_size(0) == 1024
    assert [bhttp.response_bucket(n) for n in (0, 4096, 8192, 8193, 70000)] == [8192, 8192, 8192, 16384, 131072]
    resp = bhttp.encode_response(bhttp.Response(200, (("content-type", "application/json"),), b"{}"))
    assert bhttp.decode_response(bhttp.pad(resp, 4096)).content == b"{}"
    with pytest.raises(ValueError):
        bhttp.pad(resp, 1)


# -- F5: a replayed (stale) identity document is refused -------------------------------------------

def _signed_identity(key: SigningKey, signed_at: int, keys_b64: str | None = None) -> dict:
    from notary.core import Identity, sign_identity

    return sign_identity(Identity(name="gw", region="r", key_id=key.key_id, public_key=key.verify_key.b64,
                                  software="parallax-test", signed_at=signed_at, ohttp_keys=keys_b64), key)


def test_check_identity_refuses_stale_and_future_documents() -> None:
    from client.bundle import BundleEntry
    from client.verify import IDENTITY_MAX_AGE, IDENTITY_MAX_SKEW, check_identity

    key = SigningKey.generate()
    e = BundleEntry("gw", "http://127.0.0.1:9", "r", key.key_id, key.verify_key.b64)
    now = 1_700_000_000
    assert IDENTITY_MAX_AGE == 3600
    assert check_identity(e, _signed_identity(key, now - IDENTITY_MAX_AGE), now=now) is None
    assert check_identity(e, _signed_identity(key, now + IDENTITY_MAX_SKEW), now=now) is None
    old = check_identity(e, _signed_identity(key, now - 7200), now=now)
    assert old is not None and old.startswith("identity stale") and "7200s ago" in old
    ahead = check_identity(e, _signed_identity(key, now + IDENTITY_MAX_SKEW + 1), now=now)
    assert ahead is not None and ahead.startswith("identity stale") and "future" in ahead


async def test_a_relay_replaying_an_old_identity_gets_nothing_encrypted_to_the_old_key(tmp_path: Path) -> None:
    import time

    from client.bundle import BundleEntry
    from client.ohttp import RelayRoute, ask_notary_relayed
    from notary.core import Target

    key = SigningKey.generate()
    old_gateway_key = ohttp.GatewayKey.generate(7)  # rotated away two hours ago
    stale = _signed_identity(key, int(time.time()) - 7200, base64.b64encode(
        ohttp.encode_keys([old_gateway_key.config])).decode())
    posts: list[bytes] = []

    async def identity(request: web.Request) -> web.Response:
        return web.json_response(stale)

    async def relay(request: web.Request) -> web.Response:
        posts.append(await request.read())
        return web.Response(status=502)

    app = web.Application()
    app.router.add_get("/v1/relay/{key_id}/notary", identity)
    app.router.add_post("/v1/relay/{key_id}", relay)
    async with serving(app) as url, aiohttp.ClientSession() as s:
        entry = BundleEntry("gw", "http://127.0.0.1:9", "r", key.key_id, key.verify_key.b64)
        answer = await ask_notary_relayed(s, entry, Target.parse("a.test", 443), "n" * 24,
                                          routes=[RelayRoute.for_url(url)], timeout=5)
    assert answer.error is not None and "identity stale" in answer.error, answer.error
    assert posts == []  # nothing was encrypted to the replayed key, nor sent
