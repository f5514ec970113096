"""Cached answers obey the policy in force (issue 8, item 7), and refusals are not stored (item 3).

A notary restarted on the same data dir with a stricter policy must not serve its
cached observation of a loopback target; one restarted with a looser policy must
not serve a refusal.  Real notary apps, a real TLS server on loopback, a real SQLite store.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import web

from notary.config import NotaryConfig
from notary.core import AddressPolicy, ProbeResult, SigningKey, Target, parse_networks
from notary.core.freshness import verify_answer
from notary.store import SQLiteStore
from tests.support.tls import make_ca, server_context, tls_server

LOOPBACK = AddressPolicy(parse_networks(["127.0.0.0/8"]), None)
STRICT = AddressPolicy()


@contextlib.asynccontextmanager
async def notary(data: Path, key: SigningKey, policy: AddressPolicy) -> AsyncIterator[Any]:
    from notary.server import create_app

    app = create_app(NotaryConfig(data_dir=data, policy=policy, rate_per_client=1000.0, burst_per_client=1000), key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def observe(host: str, port: int) -> Any:
        async with aiohttp.ClientSession() as s:
            async with s.post(base + "/v1/observe", json={"targets": [{"host": host, "port": port}],
                                                          "nonce": "policy-cache-nonce-01"}) as r:
                assert r.status == 200, await r.text()
                doc = await r.json()
        res = doc["results"][0]
        return verify_answer(res["envelopes"], res["freshness"], key.verify_key, nonce="policy-cache-nonce-01")[0]

    try:
        yield observe
    finally:
        await runner.cleanup()


async def test_a_stricter_restart_does_not_serve_a_cached_loopback_observation(tmp_path: Path) -> None:
    key = SigningKey.generate()
    ca = make_ca()
    async with tls_server(server_context(ca.issue_cert("127.0.0.1"))) as srv:
        async with notary(tmp_path, key, LOOPBACK) as observe:
            first = await observe("127.0.0.1", srv.port)
            assert first.status == "ok"
            again = await observe("127.0.0.1", srv.port)
            assert again.status == "ok" and again.source == "cached"
        async with notary(tmp_path, key, STRICT) as observe:
            obs = await observe("127.0.0.1", srv.port)
    assert obs.status == "blocked_by_policy" and obs.source == "fresh"


async def test_refusals_are_not_stored_and_a_looser_restart_probes_afresh(tmp_path: Path) -> None:
    key = SigningKey.generate()
    ca = make_ca()
    async with tls_server(server_context(ca.issue_cert("127.0.0.1"))) as srv:
        async with notary(tmp_path, key, STRICT) as observe:
            assert (await observe("127.0.0.1", srv.port)).status == "blocked_by_policy"
        store = await SQLiteStore.open(tmp_path / "observations.sqlite3")
        try:
            assert await store.count() == 0  # a refusal is decided, never stored
            # A database written by an older notary holds refusals: they must not be served either.
            target = Target.parse("127.0.0.1", srv.port)
            refusal = ProbeResult.failure(target, "127.0.0.1", int(__import__("time").time()),
                                          "blocked_by_policy", "loopback address")
            await store.add([refusal], all_addresses=False)
        finally:
            await store.close()
        async with notary(tmp_path, key, LOOPBACK) as observe:
            obs = await observe("127.0.0.1", srv.port)
    assert obs.status == "ok" and obs.source == "fresh"


async def test_a_policy_replaced_in_a_running_notary_is_applied_to_its_memory_cache(tmp_path: Path) -> None:
    """A cached round remembers the policy object it was last allowed under (issue 11: one identity
    check per cached answer).  Replacing the prober's policy must make the next answer check again:
    stricter refuses the cached round, the original policy serves it from the cache once more."""
    from notary.server import SERVICE, create_app

    key = SigningKey.generate()
    ca = make_ca()
    async with tls_server(server_context(ca.issue_cert("127.0.0.1"))) as srv:
        app = create_app(NotaryConfig(data_dir=tmp_path, policy=LOOPBACK, rate_per_client=1000.0,
                                      burst_per_client=1000), key)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async def observe(nonce: str) -> Any:
                async with aiohttp.ClientSession() as s:
                    async with s.post(base + "/v1/observe", json={"targets": [{"host": "127.0.0.1", "port": srv.port}],
                                                                  "nonce": nonce}) as r:
                        assert r.status == 200, await r.text()
                        res = (await r.json())["results"][0]
                return verify_answer(res["envelopes"], res["freshness"], key.verify_key, nonce=nonce)[0]

            assert (await observe("policy-memo-nonce-1")).source == "fresh"
            assert (await observe("policy-memo-nonce-2")).source == "cached"
            assert srv.handshakes == 1
            prober = app[SERVICE].prober
            prober.policy = STRICT
            refused = await observe("policy-memo-nonce-3")
            assert refused.status == "blocked_by_policy" and refused.source == "fresh"
            prober.policy = AddressPolicy(parse_networks(["127.0.0.0/8"]), None)  # equal, but another object
            again = await observe("policy-memo-nonce-4")
            assert again.status == "ok" and again.source == "cached"
            assert srv.handshakes == 1  # the refusal was never cached nor stored; the round was kept
        finally:
            await runner.cleanup()
