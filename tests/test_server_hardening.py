"""Hardening found in review: rate-limit keys behind proxies and over IPv6, slow bodies,
over-long numbers, nonces with a trailing newline, store failures that must not strand callers."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from notary.config import NotaryConfig
from notary.core import ProbeResult, SigningKey, Target, parse_networks
from notary.errors import StoreError
from notary.server import client_key, create_app
from notary.store import SQLiteStore

PROXY = parse_networks(["10.0.0.0/8"])


@pytest.mark.parametrize("peer, forwarded, expected", [
    ("198.51.100.7", [], "198.51.100.7"),                                  # no proxy configured for this peer
    ("198.51.100.7", ["203.0.113.9"], "198.51.100.7"),                    # untrusted peer: header ignored
    ("10.0.0.2", ["203.0.113.9"], "203.0.113.9"),                         # trusted proxy: the client it names
    ("10.0.0.2", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),                # rightmost hop, not a spoofable left one
    ("10.0.0.2", ["203.0.113.9, 10.0.0.5"], "203.0.113.9"),               # skip chained trusted proxies
    ("10.0.0.2", ["garbage"], "10.0.0.2"),                                # unparseable hop: keep the proxy
    ("2001:db8:1:2:3:4:5:6", [], "2001:db8:1:2::/64"),                    # IPv6 keyed by /64
    ("2001:db8:1:2:ffff::1", [], "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.7", [], "198.51.100.7"),                           # v4-mapped: the IPv4 client
])
def test_client_key(peer: str, forwarded: list[str], expected: str) -> None:
    assert client_key(peer, forwarded, PROXY) == expected


async def _serve(app: web.Application):
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_rate_limit_per_forwarded_client_behind_a_trusted_proxy(tmp_path: Path) -> None:
    cfg = NotaryConfig(data_dir=tmp_path, rate_per_client=0.001, burst_per_client=2,
                       trusted_proxies=parse_networks(["127.0.0.0/8"]))
    runner, url = await _serve(create_app(cfg, SigningKey.generate()))
    try:
        async with aiohttp.ClientSession() as s:
            async def get(client: str) -> int:
                async with s.get(url + "/v1/notary", headers={"X-Forwarded-For": client}) as r:
                    return r.status
            assert [await get("198.51.100.1") for _ in range(3)] == [200, 200, 429]
            assert await get("198.51.100.2") == 200  # another client behind the same proxy is not starved
    finally:
        await runner.cleanup()


async def test_bad_inputs_are_400_not_500(tmp_path: Path) -> None:
    cfg = NotaryConfig(data_dir=tmp_path, body_timeout=0.5)
    runner, url = await _serve(create_app(cfg, SigningKey.generate()))
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/v1/observe/example.com/443", params={"nonce": "abcdefghijklmnop\n"}) as r:
                assert r.status == 400 and (await r.json())["error"] == "bad_nonce"
            async with s.get(url + "/v1/observe/example.com/443",
                             params={"nonce": "abcdefghijklmnop", "max_age": "9" * 5000}) as r:
                assert r.status == 400 and (await r.json())["error"] == "bad_max_age"
        # A body that never finishes: 400 after body_timeout, the server keeps serving.
        host, port = url[7:].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/observe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 400")
        assert b"body_timeout" in await asyncio.wait_for(reader.read(1000), 5)
        writer.close()
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/healthz") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()


async def test_unexpected_store_failure_reaches_every_waiter(tmp_path: Path, monkeypatch) -> None:
    store = await SQLiteStore.open(tmp_path / "obs.sqlite3")
    try:
        def boom(self: ProbeResult) -> bytes:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(ProbeResult, "to_record", boom)
        t = Target.parse("a.example", 443)
        r = ProbeResult.failure(t, "192.0.2.1", 1, "timeout", "x")
        results = await asyncio.wait_for(asyncio.gather(
            *(store.add([r], all_addresses=False) for _ in range(5)), return_exceptions=True), 10)
        assert all(isinstance(x, StoreError) for x in results)
    finally:
        await store.close()


def test_ipv4_translated_and_non_unicast_ipv6_are_refused() -> None:
    from notary.core import AddressPolicy

    policy = AddressPolicy()
    for addr in ("::ffff:0:7f00:1", "::ffff:0:a00:1", "3fff::1", "5f00::1", "4000::1"):
        assert policy.address_reason(addr), addr
    assert policy.address_reason("2606:4700::1") is None
    assert ipaddress.ip_address("::ffff:0:808:808")  # translated public IPv4 stays allowed
    assert policy.address_reason("::ffff:0:808:808") is None


def test_rate_limiter_charges_large_answers_after_the_fact() -> None:
    from notary.ratelimit import RateLimiter

    rl = RateLimiter(rate=1.0, burst=10)
    assert rl.check("c", 0.0, 2) == 0          # two targets announced
    rl.charge("c", 14)                         # ...that produced 16 envelopes
    assert rl.check("c", 0.0, 1) == pytest.approx(7.0)   # 8 - 14 = 6 of debt, plus the 1 asked
    rl.charge("c", 1000)
    assert rl.check("c", 0.0, 1) == pytest.approx(11.0)  # debt capped at -burst
    assert rl.check("other", 0.0, 1) == 0      # other clients unaffected


def test_rate_limiter_key_rotation_never_resets_a_limited_client() -> None:
    """More distinct keys than the table holds (e.g. rotating through the /64s of one /48)
    must not give a limited client a fresh bucket: keys are forgotten only once refilled."""
    from notary.ratelimit import RateLimiter

    rl = RateLimiter(rate=1.0, burst=4, max_clients=8)
    for _ in range(4):
        assert rl.check("victim-of-own-greed", 0.0) == 0
    assert rl.check("victim-of-own-greed", 0.0) > 0           # limited
    for i in range(100):                                       # a flood of fresh keys
        rl.check(f"rotating-{i}", 0.1)
    assert rl.check("victim-of-own-greed", 0.2) > 0           # still limited: not forgotten
    assert rl.overflowed > 0
    # The flood's surplus keys shared one overflow bucket, which is now empty.
    assert rl.check("newcomer", 0.2) > 0
    assert len(rl._buckets) <= 8


def test_rate_limiter_forgets_refilled_keys_when_full() -> None:
    from notary.ratelimit import RateLimiter

    rl = RateLimiter(rate=1.0, burst=4, max_clients=2)
    assert rl.check("a", 0.0) == 0
    assert rl.check("b", 0.0) == 0
    # 10 s later both have refilled: a new key evicts the oldest and gets its own full bucket.
    for _ in range(4):
        assert rl.check("c", 10.0) == 0
    assert rl.overflowed == 0
    assert "a" not in rl._buckets and len(rl._buckets) == 2
    # A charge to a key that overflowed lands on the shared bucket, not nowhere.
    rl2 = RateLimiter(rate=1.0, burst=4, max_clients=1)
    assert rl2.check("x", 0.0, 4) == 0                          # x drained, so it cannot be forgotten
    assert rl2.check("y", 0.0, 1) == 0                          # y overflows
    rl2.charge("y", 3)
    assert rl2.check("z", 0.0, 1) > 0                           # overflow bucket drained by y's charge
