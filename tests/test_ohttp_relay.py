"""Oblivious HTTP end to end on loopback: gateways, a Parallax relay, a standard relay, the client.

Everything is real: notary servers (client.cluster.local_cluster) with their gateway
keys in tmp_path, a relay notary, an HTTPS site, and a minimal third-party RFC 9458
relay (an aiohttp app that only forwards the body and its content type).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import stat
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from client.api import verify_with_notaries
from client.bundle import Bundle, BundleEntry
from client.cli._check import relay_line, render_table
from client.cluster import LocalCluster, local_cluster
from client.devtools import StaticResolver, make_cert_context, tls_site
from client.ohttp import RelayRoute, ask_notary_relayed, plan_relay
from notary.core import Target, bhttp, ohttp, verify_identity
from notary.errors import InputError
from notary.ohttp_gateway import GATEWAY_KEYS_FILE, load_gateway_keys, rotate_gateway_keys
from notary.errors import KeyFileError
from notary.server import SERVICE

HOST = "localhost"
RESOLVER = StaticResolver({HOST: ["127.0.0.1"]})


@pytest.fixture(scope="module")
def site_ctx() -> ssl.SSLContext:
    return make_cert_context(HOST, org="Parallax OHTTP test site")


@pytest.fixture
async def site(site_ctx):
    async with tls_site(site_ctx) as s:
        yield s


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with local_cluster(4, tmp_path, resolver=RESOLVER, relays=(0,)) as c:
        yield c


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s


async def identity_of(session: aiohttp.ClientSession, cluster: LocalCluster, i: int) -> Any:
    async with session.get(cluster.urls[i] + "/v1/notary") as r:
        return verify_identity(await r.json(), cluster.keys[i].verify_key)


async def post_gateway(session: aiohttp.ClientSession, url: str, body: bytes,
                       ctype: str = ohttp.REQUEST_MEDIA_TYPE) -> tuple[int, str, bytes]:
    async with session.post(url + "/.well-known/ohttp-gateway", data=body, headers={"Content-Type": ctype}) as r:
        return r.status, r.content_type, await r.read()


# -- the gateway ---------------------------------------------------------------------------------

async def test_gateway_keys_are_served_and_signed_in_the_identity(cluster, session) -> None:
    ident = await identity_of(session, cluster, 1)
    async with session.get(cluster.urls[1] + "/.well-known/ohttp-gateway") as r:
        assert r.status == 200 and r.content_type == "application/ohttp-keys"
        served = await r.read()
    assert base64.b64decode(ident.ohttp_keys) == served
    configs = ohttp.decode_keys(served)
    assert [c.key_id for c in configs] == [0, 1]  # current, next
    assert ident.relay is False and (await identity_of(session, cluster, 0)).relay is True
    path = Path(cluster.bundle_path).parent / "notary-2" / GATEWAY_KEYS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_gateway_answers_an_encapsulated_identity_request(cluster, session) -> None:
    cfg = ohttp.decode_keys(base64.b64decode((await identity_of(session, cluster, 1)).ohttp_keys))[0]
    enc, ctx = ohttp.encapsulate_request(cfg, bhttp.encode_request(bhttp.Request("GET", "https", "", "/v1/notary")))
    status, ctype, raw = await post_gateway(session, cluster.urls[1], enc)
    assert (status, ctype) == (200, "message/ohttp-res")
    resp = bhttp.decode_response(ohttp.decapsulate_response(ctx, raw))
    assert resp.status == 200 and resp.header("content-type") == "application/json"
    assert verify_identity(json.loads(resp.content), cluster.keys[1].verify_key).name == "notary-2"


async def test_gateway_refuses_inner_requests_outside_observe_and_identity(cluster, session) -> None:
    cfg = ohttp.decode_keys(base64.b64decode((await identity_of(session, cluster, 1)).ohttp_keys))[0]
    for method, path in (("GET", "/metrics"), ("GET", "/healthz"), ("POST", "/.well-known/ohttp-gateway")):
        enc, ctx = ohttp.encapsulate_request(cfg, bhttp.encode_request(bhttp.Request(method, "https", "", path)))
        status, _, raw = await post_gateway(session, cluster.urls[1], enc)
        assert status == 200
        inner = bhttp.decode_response(ohttp.decapsulate_response(ctx, raw))
        assert inner.status == 404 and b"parallax_" not in inner.content


async def test_gateway_inner_errors_come_back_encrypted(cluster, session) -> None:
    cfg = ohttp.decode_keys(base64.b64decode((await identity_of(session, cluster, 1)).ohttp_keys))[0]
    bad = bhttp.Request("POST", "https", "", "/v1/observe", (("content-type", "application/json"),), b'{"targets": 1}')
    enc, ctx = ohttp.encapsulate_request(cfg, bhttp.encode_request(bad))
    status, _, raw = await post_gateway(session, cluster.urls[1], enc)
    assert status == 200
    inner = bhttp.decode_response(ohttp.decapsulate_response(ctx, raw))
    assert inner.status == 400 and json.loads(inner.content)["error"] in ("bad_json", "bad_nonce", "bad_targets")


async def test_gateway_rejects_bad_encapsulations_with_400_never_500(cluster, session) -> None:
    cfg = ohttp.decode_keys(base64.b64decode((await identity_of(session, cluster, 1)).ohttp_keys))[0]
    enc, _ = ohttp.encapsulate_request(cfg, bhttp.encode_request(bhttp.Request("GET", "https", "", "/v1/notary")))
    flipped = enc[:-1] + bytes([enc[-1] ^ 1])
    wrong_id = bytes([99]) + enc[1:]
    stranger = ohttp.encapsulate_request(ohttp.GatewayKey.generate(cfg.key_id).config, b"\x00")[0]
    cases = {"tampered": flipped, "truncated": enc[:30], "empty": b"", "wrong_key_id": wrong_id, "wrong_key": stranger}
    for name, body in cases.items():
        status, ctype, raw = await post_gateway(session, cluster.urls[1], body)
        assert status == 400, name
        assert ctype == "application/json" and json.loads(raw)["error"] in (
            "bad_ohttp", "unknown_key", "decrypt_failed", "unsupported_suite"), name
    status, _, raw = await post_gateway(session, cluster.urls[1], enc, ctype="application/json")
    assert status == 415 and json.loads(raw)["error"]


async def test_rotation_lists_next_and_still_accepts_the_previous_key(tmp_path: Path) -> None:
    d = tmp_path / "gw"
    d.mkdir()
    ring = load_gateway_keys(d)
    old_current = ring.current
    rotated = rotate_gateway_keys(d)
    assert rotated.current.config == ring.next.config
    assert rotated.previous is not None and rotated.previous.config == old_current.config
    assert rotated.next.config.key_id not in (ring.current.config.key_id, ring.next.config.key_id)
    assert [c.key_id for c in rotated.listed] == [ring.next.config.key_id, rotated.next.config.key_id]
    assert old_current.config.key_id in rotated.accepted
    assert stat.S_IMODE((d / GATEWAY_KEYS_FILE).stat().st_mode) == 0o600
    assert load_gateway_keys(d).accepted.keys() == rotated.accepted.keys()
    os.chmod(d / GATEWAY_KEYS_FILE, 0o644)
    with pytest.raises(KeyFileError):
        load_gateway_keys(d)


async def test_running_gateway_picks_up_a_rotation(cluster, session) -> None:
    data = Path(cluster.bundle_path).parent / "notary-2"
    cfg_before = ohttp.decode_keys(base64.b64decode((await identity_of(session, cluster, 1)).ohttp_keys))[0]
    os.utime(data / GATEWAY_KEYS_FILE, ns=(0, 0))  # make sure the mtime changes even on a coarse clock
    rotate_gateway_keys(data)
    async with session.get(cluster.urls[1] + "/.well-known/ohttp-gateway") as r:
        listed = ohttp.decode_keys(await r.read())
    assert listed[0].key_id == 1 and listed[1].key_id == 2
    # A client still holding the pre-rotation configuration is served (previous key).
    enc, ctx = ohttp.encapsulate_request(cfg_before, bhttp.encode_request(bhttp.Request("GET", "https", "", "/v1/notary")))
    status, _, raw = await post_gateway(session, cluster.urls[1], enc)
    assert status == 200 and bhttp.decode_response(ohttp.decapsulate_response(ctx, raw)).status == 200


# -- the client through a relay -------------------------------------------------------------------

async def test_relayed_check_bounces_off_the_relay_and_names_it(site, cluster, session) -> None:
    v = await verify_with_notaries(HOST, site.port, bundle=cluster.bundle, connect_to=("127.0.0.1", site.port),
                                   wait_all=True, timeout=10, relay="auto")
    assert v.status == "consistent", v.summary
    assert v.relays == ("notary-1",)
    assert [r.name for r in v.results] == ["notary-2", "notary-3", "notary-4"]  # the relay was not asked
    assert all(r.result == "agrees" for r in v.results)
    assert v.to_json()["relays"] == ["notary-1"]
    # The relay notary never probed the site, and its metrics do not name it (its logs are
    # checked in the network-namespace lab, where every notary is its own process).
    svc = cluster.apps[0][SERVICE]
    assert svc.probes + svc.cache_hits == 0
    async with session.get(cluster.urls[0] + "/metrics") as r:
        assert HOST not in await r.text()
    direct = await verify_with_notaries(HOST, site.port, bundle=cluster.bundle, connect_to=("127.0.0.1", site.port),
                                        wait_all=True, timeout=10)
    assert direct.status == "consistent" and direct.relays == () and "relays" not in direct.to_json()


async def test_explicit_parallax_relay_url(site, cluster) -> None:
    v = await verify_with_notaries(HOST, site.port, bundle=cluster.bundle, connect_to=("127.0.0.1", site.port),
                                   wait_all=True, timeout=10, relay=cluster.urls[0])
    assert v.status == "consistent" and v.relays == (cluster.urls[0],)
    # The relay URL is notary-1's: notary-1 is not asked (it would see both the address and
    # the site), and was never forwarded to by itself.
    assert [r.name for r in v.results] == ["notary-2", "notary-3", "notary-4"]
    svc = cluster.apps[0][SERVICE]
    assert svc.probes + svc.cache_hits == 0
    assert v.address_seen_by == () and "not your address" in render_table(v)


def test_an_explicit_relay_url_is_matched_to_its_notary_normalised(cluster) -> None:
    port = cluster.urls[0].rsplit(":", 1)[1]
    for url in (f"HTTP://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/v1/relay/{{key_id}}",
                f"http://127.0.0.1.:{port}/v1/relay"):
        plan = plan_relay(cluster.bundle, url)
        assert plan is not None and [e.name for e in plan.entries] == ["notary-2", "notary-3", "notary-4"], url
        assert plan.routes[0].via == cluster.bundle.notaries[0].key_id
    other = plan_relay(cluster.bundle, "http://127.0.0.1:9/")  # no notary there: everyone is asked
    assert other is not None and len(other.entries) == 4 and other.routes[0].via is None


def test_a_fallback_relay_that_was_also_asked_is_named_as_having_seen_the_address(cluster) -> None:
    from client.ohttp import RelayPlan
    from client.verdict import ClientView, Verdict

    n1, n2, n3, _ = cluster.bundle.notaries
    plan = RelayPlan((n2, n3), (RelayRoute.for_entry(n1), RelayRoute.for_entry(n2)), used=["notary-1", "notary-2"])
    v = Verdict("consistent", HOST, 443, ClientView("ok", "00" * 32, None, None, "probe"), (), 0, 0, 0, (), (), "s",
                "mpic", 0)
    # notary-2 relayed notary-3's request (it saw the address) and was asked itself.
    assert plan.annotate(v).address_seen_by == ("notary-2",)
    plan.used.remove("notary-2")
    assert plan.annotate(v).address_seen_by == ()


@contextlib.asynccontextmanager
async def standard_relay(targets: dict[str, str]) -> AsyncIterator[str]:
    """A minimal third-party RFC 9458 relay: one relay resource per gateway, body and type forwarded."""
    async def forward(request: web.Request) -> web.Response:
        gateway = targets[request.match_info["gw"]]
        async with aiohttp.ClientSession() as s, s.post(
                gateway, data=await request.read(), headers={"Content-Type": request.content_type}) as r:
            return web.Response(status=r.status, body=await r.read(), headers={"Content-Type": r.content_type})

    app = web.Application()
    app.router.add_post("/relay/{gw}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_standard_third_party_relay_works(site, cluster) -> None:
    targets = {e.key_id: e.url + "/.well-known/ohttp-gateway" for e in cluster.bundle.notaries}
    async with standard_relay(targets) as base:
        v = await verify_with_notaries(HOST, site.port, bundle=cluster.bundle, connect_to=("127.0.0.1", site.port),
                                       wait_all=True, timeout=10, relay=base + "/relay/{key_id}")
    assert v.status == "consistent", v.summary
    assert v.relays == (base,) and len(v.results) == 4
    # A third-party relay forwards only encrypted requests: the identity documents were fetched
    # from each notary directly, so each saw the client's address, and the CLI says so.
    assert sorted(v.address_seen_by) == ["notary-1", "notary-2", "notary-3", "notary-4"]
    assert v.to_json()["address_seen_by"] == list(v.address_seen_by)
    line = relay_line(v)
    assert "your address was seen by" in line and "notary-3" in line and "not your address" not in line
    # Other braces in a relay URL are left alone (only {key_id} is a placeholder).
    async with standard_relay(targets) as base:
        v = await verify_with_notaries(HOST, site.port, bundle=cluster.bundle, connect_to=("127.0.0.1", site.port),
                                       wait_all=True, timeout=10, relay=base + "/relay/{key_id}?x={y}")
    assert v.status == "consistent", v.summary


async def test_relay_falls_back_to_the_next_relay(site, cluster, session, unused_tcp_port) -> None:
    dead = RelayRoute("dead-relay", f"http://127.0.0.1:{unused_tcp_port}/v1/relay/{{key_id}}",
                      f"http://127.0.0.1:{unused_tcp_port}/v1/relay/{{key_id}}/notary")
    good = RelayRoute.for_entry(cluster.bundle.notaries[0])
    used: list[str] = []
    failed: set[str] = set()
    target = Target.parse(HOST, site.port)
    answer = await ask_notary_relayed(session, cluster.bundle.notaries[2], target, "n" * 24, routes=[dead, good],
                                      timeout=10, used=used, failed=failed)
    assert answer.error is None and answer.envelopes
    assert used == ["notary-1"] and failed == {"dead-relay"}
    # A notary's request never goes through that same notary.
    self_only = await ask_notary_relayed(session, cluster.bundle.notaries[0], target, "n" * 24, routes=[good], timeout=5)
    assert self_only.error and "no relay" in self_only.error


def test_auto_without_a_relay_capable_notary_is_an_input_error() -> None:
    from notary.core import SigningKey
    k = SigningKey.generate()
    bundle = Bundle((BundleEntry("a", "http://127.0.0.1:1", "r", k.key_id, k.verify_key.b64),))
    with pytest.raises(InputError):
        plan_relay(bundle, "auto")
    assert plan_relay(bundle, "none") is None and plan_relay(bundle, None) is None
    with pytest.raises(InputError):
        plan_relay(bundle, "ftp://relay.example/")


# -- the relay's own limits ----------------------------------------------------------------------

async def test_relay_is_no_open_proxy_and_caps_what_it_forwards(cluster, session) -> None:
    relay = cluster.urls[0]
    async with session.post(relay + "/v1/relay/ed25519:00", data=b"x",
                            headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE}) as r:
        assert r.status == 404  # not a gateway of its bundle
    key_id = cluster.bundle.notaries[1].key_id
    async with session.post(f"{relay}/v1/relay/{key_id}", data=b"{}", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 415
    async with session.post(f"{relay}/v1/relay/{key_id}", data=b"\x00" * (200 * 1024),
                            headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE}) as r:
        assert r.status == 413
    async with session.post(f"{relay}/v1/relay/{key_id}", data=b"\x00" * 10,
                            headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE}) as r:
        assert r.status == 400  # forwarded: the gateway's own refusal comes back
        assert (await r.json())["error"] in ("bad_ohttp", "unknown_key", "unsupported_suite")
    async with session.get(f"{relay}/v1/relay/{key_id}/notary") as r:
        assert r.status == 200
        assert verify_identity(await r.json(), cluster.keys[1].verify_key).name == "notary-2"


async def test_relay_refuses_private_gateways_unless_allowed(tmp_path: Path, session) -> None:
    from notary.config import NotaryConfig
    from notary.core import SigningKey
    from notary.relay import RelayConfig
    from notary.server import create_app

    async with local_cluster(1, tmp_path / "c", resolver=RESOLVER) as c:
        gateways = {c.bundle.notaries[0].key_id: c.urls[0]}
        d = tmp_path / "relay"
        d.mkdir()
        # Default address policy: loopback (a private address) is refused.
        app = create_app(NotaryConfig(data_dir=d), SigningKey.generate(), relay=RelayConfig(gateways, rate_per_client=2,
                                                                                            burst_per_client=2))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            url = f"{base}/v1/relay/{c.bundle.notaries[0].key_id}"
            async with session.post(url, data=b"\x00" * 64, headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE}) as r:
                assert r.status == 502 and (await r.json())["error"] == "bad_gateway"
            statuses = []
            for _ in range(4):  # burst 2: the per-client bucket empties
                async with session.post(url, data=b"\x00", headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE}) as r:
                    statuses.append(r.status)
            assert 429 in statuses
        finally:
            await runner.cleanup()
