"""``parallax demo``: the main job, on one machine, with no network, root or Docker.

1. start a local HTTPS site for ``localhost`` and a 3-notary cluster on loopback;
2. check the site through the notaries: ``consistent``;
3. put an intercepting proxy (forged certificate, its own CA) on the client's
   path only (``--connect-to``) and check again: ``mitm_suspected``;
4. ask one notary to observe the site and verify its signed observation
   (printed in full with ``verbose``).

Exit code 0 when both verdicts are the expected ones, 1 otherwise.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import aiohttp

from notary.core import pin_from_spki_hex, verify_answer
from client.api import verify_with_notaries
from client.cli import render_table
from client.cluster import local_cluster
from client.devtools import StaticResolver, interceptor, make_cert_context, tls_site

__all__ = ["run_demo"]

HOST = "localhost"


async def run_demo(data_dir: Path, *, verbose: bool = False) -> int:
    site_ctx = make_cert_context(HOST, org="Parallax demo site")
    forged_ctx = make_cert_context(HOST, org="Interceptor CA")
    # The site listens on 127.0.0.1 only, so the notaries resolve "localhost" to that
    # address alone (the system resolver may also answer ::1).
    resolver = StaticResolver({HOST: ["127.0.0.1"]})
    async with tls_site(site_ctx, host="127.0.0.1") as site, local_cluster(3, data_dir, resolver=resolver) as cluster:
        print(f"site      https://{HOST}:{site.port}  (127.0.0.1)")
        print(f"notaries  {', '.join(cluster.urls)}")
        print(f"bundle    {cluster.bundle_path}\n")

        # 1. A clean check.
        clean = await verify_with_notaries(
            HOST, site.port, bundle=cluster.bundle, connect_to=("127.0.0.1", site.port), wait_all=True
        )
        print("== check 1: clean path ==")
        print(render_table(clean))

        # 3. The same check with an interceptor on the client's path only.
        async with interceptor(forged_ctx, ("127.0.0.1", site.port), sni=HOST) as mitm:
            bad = await verify_with_notaries(
                HOST, site.port, bundle=cluster.bundle, connect_to=("127.0.0.1", mitm.port), wait_all=True
            )
        print(f"\n== check 2: intercepting proxy on your path (127.0.0.1:{mitm.port}) ==")
        print(render_table(bad))

        # 3. One notary's signed observation, verified here.
        entry, key = cluster.bundle.notaries[0], cluster.keys[0].verify_key
        nonce = secrets.token_urlsafe(16)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{entry.url}/v1/observe/{HOST}/{site.port}", params={"nonce": nonce},
                             allow_redirects=False) as r:
                doc = await r.json()
        res = doc["results"][0]
        obs = verify_answer(res["envelopes"], res["freshness"], key, nonce=nonce)[0]
        seen = pin_from_spki_hex(obs.spki_sha256) if obs.spki_sha256 else "-"
        print(f"\n== observation by {entry.name}: signature verified, nonce echoed, key {seen} ==")
        if verbose:
            shown = {k: v for k, v in obs.to_payload().items() if k != "chain"}
            shown["chain"] = f"<{len(obs.chain)} certificate(s)>"
            shown.update(nonce=obs.nonce, signed_at=obs.signed_at, source=obs.source)  # from the freshness proof
            print(json.dumps(shown, indent=2))
        else:
            print("(the whole signed observation: parallax demo --verbose)")
    ok = clean.status == "consistent" and bad.status == "mitm_suspected"
    print(f"\ndemo {'passed' if ok else 'FAILED'}: clean={clean.status} intercepted={bad.status}")
    return 0 if ok else 1
