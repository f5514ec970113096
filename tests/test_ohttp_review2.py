"""Second review of the Oblivious HTTP gateway and relay (each reproduced on loopback first).

Real notary applications on loopback sockets; the flooder is a plain HTTP client.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from notary.config import NotaryConfig
from notary.core import AddressPolicy, SigningKey, bhttp, ohttp, parse_networks
from tests.test_ohttp_hardening import serving

LOOPBACK = AddressPolicy(parse_networks(["127.0.0.0/8", "::1/128"]), None)
GATEWAY = "/.well-known/ohttp-gateway"


def notary_app(tmp_path: Path, *, rate: float = 0.001, burst: int = 5, name: str = "gw", **kw) -> web.Application:
    from notary.server import create_app

    d = tmp_path / name
    d.mkdir(exist_ok=True)
    cfg = NotaryConfig(data_dir=d, name=name, policy=LOOPBACK, rate_per_client=rate, burst_per_client=burst,
                       rate_limit_delay=0.0)
    return create_app(cfg, SigningKey.generate(), **kw)


async def decapsulations(s: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The gateway's decryption counter, read from its Prometheus metrics."""
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    out = {"decapsulated": 0.0, "rejected": 0.0}
    for line in text.splitlines():
        if line.startswith("parallax_ohttp_decapsulations_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = float(line.rsplit(" ", 1)[1])
    return out


# -- 1: the outer request is rate-limited before it is decrypted ------------------------------------

async def test_a_flood_of_garbage_encapsulations_gets_429s_and_no_more_decryptions(tmp_path: Path) -> None:
    app = notary_app(tmp_path, burst=5)
    async with serving(app) as url, aiohttp.ClientSession() as s:
        async with s.get(url + GATEWAY) as r:
            cfg = ohttp.decode_keys(await r.read())[0]
        # Well-formed headers (the right key id and suite), garbage ciphertext: each one costs an HPKE open.
        head = bytes([cfg.key_id]) + (0x0020).to_bytes(2, "big") + (1).to_bytes(2, "big") + (1).to_bytes(2, "big")
        statuses = []
        for _ in range(30):
            async with s.post(url + GATEWAY, data=head + os.urandom(32 + 64),
                              headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE}) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert "Retry-After" in r.headers
                    assert (await r.json())["error"] == "too_many_requests"
        assert statuses[:5] == [400] * 5
        assert statuses[5:] == [429] * 25
        counts = await decapsulations(s, url)
        assert counts["rejected"] == 5  # the 25 refused messages were never decrypted
        assert counts["decapsulated"] == 0


async def test_a_valid_encapsulated_request_is_charged_once_not_twice(tmp_path: Path) -> None:
    app = notary_app(tmp_path, burst=4)
    async with serving(app) as url, aiohttp.ClientSession() as s:
        async with s.get(url + GATEWAY) as r:
            cfg = ohttp.decode_keys(await r.read())[0]
        inner = []
        for _ in range(4):  # a burst of 4 pays for exactly 4 identity requests through the gateway
            enc, ctx = ohttp.encapsulate_request(cfg, bhttp.encode_request(bhttp.Request("GET", "https", "", "/v1/notary")))
            async with s.post(url + GATEWAY, data=enc, headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE}) as r:
                assert r.status == 200
                inner.append(bhttp.decode_response(ohttp.decapsulate_response(ctx, await r.read())).status)
        assert inner == [200, 200, 200, 200]
        async with s.get(url + "/v1/notary") as r:
            assert r.status == 429  # and then the bucket is empty
        assert (await decapsulations(s, url))["decapsulated"] == 4


# -- 4: the OpenAPI document lists every route the app serves ---------------------------------------

def _served_routes(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue  # aiohttp adds HEAD beside each GET
        assert route.resource is not None
        out.add((route.resource.canonical, route.method.lower()))
    return out


@pytest.mark.parametrize("relay", [False, True])
async def test_every_route_the_app_serves_is_in_the_openapi_document(tmp_path: Path, relay: bool) -> None:
    from notary.relay import RelayConfig

    kw: dict[str, Any] = {"relay": RelayConfig({"ed25519:aa": "http://127.0.0.1:9"}, LOOPBACK)} if relay else {}
    app = notary_app(tmp_path, burst=40, **kw)
    served = _served_routes(app)
    async with serving(app) as url, aiohttp.ClientSession() as s:
        async with s.get(url + "/v1/openapi.json") as r:
            doc = await r.json()
    listed = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert ("/.well-known/ohttp-gateway", "post") in served
    assert served == listed  # nothing served is missing, nothing listed is not served
    assert any(p.startswith("/v1/relay/") for p, _ in listed) == relay


# -- 3: rotation beside serve and beside another rotation; nothing written before bind ---------------

def test_concurrent_rotations_each_take_effect_and_readers_never_see_a_torn_file(tmp_path: Path) -> None:
    import threading

    from notary.ohttp_gateway import _Keys, load_gateway_keys, rotate_gateway_keys

    load_gateway_keys(tmp_path)  # current 0, next 1
    reader = _Keys(tmp_path)  # what a running notary holds
    errors: list[BaseException] = []
    start = threading.Barrier(5)
    done = threading.Event()

    def rotate() -> None:
        start.wait()
        try:
            for _ in range(10):
                rotate_gateway_keys(tmp_path)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    def read() -> None:
        start.wait()
        try:
            while not done.is_set():
                reader.get()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=rotate) for _ in range(4)]
    watcher = threading.Thread(target=read)
    for t in [*threads, watcher]:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    watcher.join(10)
    assert errors == []
    ring = load_gateway_keys(tmp_path, create=False)
    assert ring.previous is not None
    # 40 rotations from (current 0, next 1): every one shifted the keys, none was lost.
    assert (ring.previous.config.key_id, ring.current.config.key_id, ring.next.config.key_id) == (39, 40, 41)
    assert reader.get().current.config.key_id == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ohttp-gateway.keys", "ohttp-gateway.keys.lock"]


async def test_the_gateway_key_file_is_created_on_first_use_not_when_the_app_is_built(tmp_path: Path) -> None:
    import stat

    app = notary_app(tmp_path)
    keys = tmp_path / "gw" / "ohttp-gateway.keys"
    assert not keys.exists()  # building the app (before any bind) wrote nothing
    async with serving(app) as url, aiohttp.ClientSession() as s:
        assert not keys.exists()
        async with s.get(url + GATEWAY) as r:
            assert r.status == 200
            listed = ohttp.decode_keys(await r.read())
        assert keys.exists() and stat.S_IMODE(keys.stat().st_mode) == 0o600
        async with s.get(url + GATEWAY) as r:
            assert ohttp.decode_keys(await r.read()) == listed  # the same keys, read back


def test_serve_that_cannot_bind_writes_no_gateway_keys(tmp_path: Path) -> None:
    import socket

    from tests.test_cli_notary import assert_one_line_error, run

    d = tmp_path / "n"
    assert run("keygen", "--data-dir", str(d)).returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(run("serve", "--region", "test", "--data-dir", str(d), "--listen", f"127.0.0.1:{port}"), 74)
    assert not (d / "ohttp-gateway.keys").exists()
    with socket.socket() as busy:  # and with several workers (the address is held before they start)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(run("serve", "--region", "test", "--data-dir", str(d), "--workers", "2",
                                  "--listen", f"127.0.0.1:{port}"), 74)
    assert not (d / "ohttp-gateway.keys").exists()


# -- 2: a relay client pays for big answers as the gateway charges the relay for them ----------------

def test_answer_cost_is_the_padded_bucket_in_4_kib_units() -> None:
    from notary.relay import answer_cost

    assert [answer_cost(b + 32) for b in (8192, 16384, 32768, 65536)] == [2, 4, 8, 16]  # AES-128-GCM: 16+16
    assert [answer_cost(b + 48) for b in (8192, 32768)] == [2, 8]  # ChaCha20-Poly1305: 32+16
    assert answer_cost(0) == 1  # a short error answer still costs its one token


async def test_one_relay_client_asking_for_many_addresses_cannot_use_up_the_relays_share(tmp_path: Path) -> None:
    import socket
    import secrets

    from client.devtools import StaticResolver, make_cert_context, tls_site
    from notary.relay import RelayConfig
    from notary.server import create_app

    addrs = [f"127.0.0.{i}" for i in range(1, 9)]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = "multi.test"
    d = tmp_path / "gw"
    d.mkdir()
    gw_key = SigningKey.generate()
    # The gateway allows the relay (one address) a burst of 16 (one all_addresses answer of 8 costs 8).
    gw = create_app(NotaryConfig(data_dir=d, name="gw", policy=LOOPBACK, rate_per_client=0.001, burst_per_client=16,
                                 rate_limit_delay=0.0), gw_key, resolver=StaticResolver({host: addrs}))
    async with tls_site(make_cert_context(host, key_type="ecdsa"), addrs, port), serving(gw) as gw_url:
        rd = tmp_path / "relay"
        rd.mkdir()
        relay = create_app(NotaryConfig(data_dir=rd, name="relay", policy=LOOPBACK,
                                        trusted_proxies=parse_networks(["127.0.0.0/8"])), SigningKey.generate(),
                           relay=RelayConfig.sized_for({gw_key.key_id: gw_url}, LOOPBACK, gateway_rate=0.001,
                                                       gateway_burst=16))
        async with serving(relay) as relay_url, aiohttp.ClientSession() as s:
            async with s.get(gw_url + GATEWAY) as r:
                cfg = ohttp.decode_keys(await r.read())[0]
            post = f"{relay_url}/v1/relay/{gw_key.key_id}"

            async def ask(client: str, inner: bhttp.Request) -> tuple[int, bytes]:
                enc, ctx = ohttp.encapsulate_request(cfg, bhttp.encode_request(inner))
                async with s.post(post, data=enc, headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE,
                                                           "X-Forwarded-For": client}) as r:
                    if r.status != 200:
                        return r.status, b""
                    res = bhttp.decode_response(ohttp.decapsulate_response(ctx, await r.read()))
                    return res.status, res.content

            def many() -> bhttp.Request:
                body = json.dumps({"targets": [{"host": host, "port": port}], "nonce": secrets.token_urlsafe(16),
                                   "all_addresses": True}).encode()
                return bhttp.Request("POST", "https", "", "/v1/observe",
                                     (("content-type", "application/json"),), body)

            status, content = await ask("198.51.100.1", many())
            assert status == 200
            assert len(json.loads(content)["results"][0]["envelopes"]) == 8  # the gateway charged the relay 8
            # A's bucket at the relay (burst 2) paid for that answer's bucket, not for one request:
            assert (await ask("198.51.100.1", many()))[0] == 429
            # ...so the relay's share at the gateway is not used up, and B is served.
            assert (await ask("198.51.100.2", bhttp.Request("GET", "https", "", "/v1/notary")))[0] == 200


def test_a_temporary_key_file_left_by_a_crash_is_removed_once_stale(tmp_path: Path) -> None:
    """A crash between writing the temporary file and renaming it left private keys behind
    (0600) for ever; the next rotation (or key creation) now removes such a file once it is a
    minute old, and leaves a younger one, which another process may still be writing."""
    import time

    from notary.ohttp_gateway import GATEWAY_KEYS_FILE, load_gateway_keys, rotate_gateway_keys

    load_gateway_keys(tmp_path)
    stale = tmp_path / f"{GATEWAY_KEYS_FILE}.crash1.tmp"
    young = tmp_path / f"{GATEWAY_KEYS_FILE}.inflight.tmp"
    other = tmp_path / "unrelated.tmp"
    for f in (stale, young, other):
        f.write_bytes(b'{"secret": "..."}')
        f.chmod(0o600)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    rotate_gateway_keys(tmp_path)
    assert not stale.exists()
    assert young.exists() and other.exists()
    # Key creation in a fresh directory cleans up too.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    crashed = fresh / f"{GATEWAY_KEYS_FILE}.x.tmp"
    crashed.write_bytes(b"{}")
    os.utime(crashed, (old, old))
    load_gateway_keys(fresh)
    assert not crashed.exists() and (fresh / GATEWAY_KEYS_FILE).exists()
