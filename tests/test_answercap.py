"""Amplification (issue 8, item 4): the bytes of one answer are capped, the cap is advertised,
and what does not fit is a signed ``answer_too_large`` observation.  A real notary, a real TLS
server with a big certificate on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from aiohttp import web

from notary.config import NotaryConfig
from notary.core import AddressPolicy, SigningKey, parse_networks, verify_identity
from notary.core.freshness import verify_answer
from notary.server import create_app
from tests.support.tls import make_ca, server_context, tls_server

LOOPBACK = AddressPolicy(parse_networks(["127.0.0.0/8"]), None)
CAP = 96 * 1024


async def test_a_small_request_cannot_buy_a_huge_answer(tmp_path: Path) -> None:
    key = SigningKey.generate()
    cert = make_ca().issue_cert(*(f"n{i}.big.example" for i in range(400)))  # a leaf of ~12 KB
    async with tls_server(server_context(cert)) as srv:
        app = create_app(NotaryConfig(data_dir=tmp_path, policy=LOOPBACK, max_answer_bytes=CAP,
                                      rate_per_client=1000.0, burst_per_client=1000), key)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/v1/notary") as r:
                    ident = verify_identity(await r.json(), key.verify_key)
                targets = [{"host": "127.0.0.1", "port": srv.port, "sni": f"n{i}.big.example"} for i in range(16)]
                request = json.dumps({"targets": targets, "nonce": "amplification-nonce-1"}).encode()
                async with s.post(base + "/v1/observe", data=request, headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 200
                    body = await r.read()
        finally:
            await runner.cleanup()
    assert ident.limits["max_answer_bytes"] == CAP
    assert len(body) <= CAP
    results = json.loads(body)["results"]
    assert [r["target"]["sni"] for r in results] == [t["sni"] for t in targets]  # every target answered, in order
    # Every answer verifies whole: the freshness leaf names the replacements, not what was dropped.
    opened = [verify_answer(r["envelopes"], r["freshness"], key.verify_key, nonce="amplification-nonce-1")[0]
              for r in results]
    statuses = [o.status for o in opened]
    assert statuses[0] == "ok" and "answer_too_large" in statuses
    assert set(statuses) == {"ok", "answer_too_large"}
    assert statuses == sorted(statuses, key=lambda s: s != "ok")  # kept in request order, the rest replaced
    big = opened[-1]
    assert big.chain == () and "max_answer_bytes" in (big.detail or "")
    # The uncapped answer would have been several times larger.
    assert len(json.dumps(results[0]["envelopes"][0])) * 16 > 2 * CAP
