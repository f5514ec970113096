"""Key-history poisoning through another SNI must not make an interception look consistent.

Anyone may ask a notary to probe the victim's address with another SNI; a
shared host then serves the attacker's certificate for that name.  If that key
entered the *victim's* key history, the weak-consistency rule (``perspectives``)
would accept an interceptor using it.  History is per host, port and SNI.
"""

from __future__ import annotations

import secrets

import aiohttp

from client.api import verify_with_notaries
from client.cluster import local_cluster
from client.devtools import StaticResolver, interceptor, make_cert_context, tls_site

VICTIM, ATTACKER = "victim.test", "attacker.test"


async def test_other_sni_does_not_poison_key_history(tmp_path) -> None:
    victim_ctx = make_cert_context(VICTIM, org="victim")
    attacker_ctx = make_cert_context(ATTACKER, org="attacker on the same shared host")

    def pick(sock, name, _ctx):  # the shared host serves the attacker's certificate for its name
        if name == ATTACKER:
            sock.context = attacker_ctx

    victim_ctx.sni_callback = pick
    resolver = StaticResolver({VICTIM: ["127.0.0.1"]})
    async with tls_site(victim_ctx) as site, local_cluster(3, tmp_path, resolver=resolver) as cluster:
        async with aiohttp.ClientSession() as s:
            for url in cluster.urls:
                body = {"targets": [{"host": VICTIM, "port": site.port, "sni": ATTACKER}],
                        "nonce": secrets.token_urlsafe(16), "all_addresses": True}
                async with s.post(url + "/v1/observe", json=body) as r:
                    assert r.status == 200
        async with interceptor(attacker_ctx, ("127.0.0.1", site.port), sni=VICTIM) as mitm:
            for policy in ("mpic", "perspectives"):
                v = await verify_with_notaries(VICTIM, site.port, bundle=cluster.bundle, policy=policy,
                                               connect_to=("127.0.0.1", mitm.port), wait_all=True)
                assert v.status == "mitm_suspected", (policy, [(r.name, r.result, r.reason) for r in v.results])
