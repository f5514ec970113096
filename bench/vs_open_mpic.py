"""Benchmark 6: one multi-perspective TLS check, Parallax beside open-mpic-core.

open-mpic-core (PyPI ``open-mpic-core``, not a Parallax dependency: install it
by hand, ``pip install open-mpic-core``) has no check that records and compares
a server's certificate.  Its TLS check is ACME TLS-ALPN-01 domain control
validation (``DcvTlsAlpnValidator``, RFC 8737): each perspective connects to
the domain on port 443 (hard-coded) with ALPN ``acme-tls/1``, takes the
certificate, and checks its single SAN and its critical acmeIdentifier
extension against an expected key-authorization hash.  That is the closest
check, and it is what is compared here.  The mismatch, stated: Parallax also
probes from the client itself, has every notary sign its observation
(Ed25519), and verifies every signature and identity document; open-mpic
neither signs nor verifies anything and has no client-side view.

Setup (all loopback): one TLS site on 127.0.0.1:443 presenting a TLS-ALPN-01
challenge certificate for ``localhost`` (ALPN acme-tls/1), own process.
* Parallax: 5 notaries (local_cluster, own process);
  ``verify_with_notaries("localhost", 443)`` as a library user calls it.
  ``cold`` = max_age=0 (every notary probes, as open-mpic always does),
  ``warm`` = answered from the notaries' caches.
* open-mpic: 5 perspectives (own process, aiohttp, one MpicDcvChecker each)
  behind ``MpicCoordinator`` (5 perspectives in 5 RIRs, quorum default 4); the
  coordinator's ``call_remote_perspective_function`` is an aiohttp POST of the
  check request (pydantic JSON) to the perspective, over a new aiohttp
  session per check (open-mpic-core has no transport of its own; Parallax,
  by contrast, keeps its notary connections alive: client.pool.  Most of an
  open-mpic check's time is elsewhere: see bench/README.md).
Runs: ``--runs`` (30) of each, interleaved; medians.
Goal: open-mpic median / Parallax median >= 10 (cold and warm).
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notary import eventloop  # noqa: E402
from bench._common import busy_processes, interleaved, median, save, serve, verdict_line  # noqa: E402

NAME = "vs_open_mpic"
GOAL = 10.0  # open-mpic time / Parallax time (P2)
HOST = "localhost"


def port_443_free() -> str | None:
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 443))
    except OSError as exc:
        return f"cannot listen on 127.0.0.1:443 ({exc}); open-mpic's TLS-ALPN-01 check only connects to port 443"
    finally:
        s.close()
    return None


async def measure(args: argparse.Namespace) -> dict:
    import aiohttp
    from open_mpic_core import (
        DcvAcmeTlsAlpn01ValidationParameters, DcvCheckResponse, MpicCoordinator, MpicCoordinatorConfiguration,
        MpicDcvRequest, MpicRequestOrchestrationParameters, RemotePerspective,
    )

    from client.api import verify_with_notaries
    from client.bundle import load_bundle

    key_auth_hash = hashlib.sha256(b"parallax-bench.key-authorization").hexdigest()
    with serve("sites", {"ports": [443], "host": "127.0.0.1", "acme": {"name": HOST, "hash": key_auth_hash}}) as site, \
            serve("cluster", {"n": 5, "table": {HOST: ["127.0.0.1"]}}) as cluster, \
            serve("mpic", {"n": 5}) as persp:
        bundle = load_bundle(cluster.info["bundle"])
        rirs = ["ARIN", "RIPE NCC", "APNIC", "LACNIC", "AFRINIC"]
        perspectives = [RemotePerspective(code=f"local-{i + 1}", rir=rirs[i]) for i in range(5)]
        url_of = {p.code: u for p, u in zip(perspectives, persp.info["urls"])}
        print(f"[{NAME}] TLS-ALPN-01 site {HOST}:443 (pid {site.pid}); Parallax notaries pid {cluster.pid}; "
              f"open-mpic perspectives pid {persp.pid}: {persp.info['urls']}")

        class Transport:
            session: aiohttp.ClientSession | None = None

            async def __call__(self, perspective, check_type, check_request):  # type: ignore[no-untyped-def]
                assert self.session is not None
                async with self.session.post(url_of[perspective.code] + "/dcv", data=check_request.model_dump_json(),
                                             headers={"Content-Type": "application/json"}) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"perspective answered HTTP {resp.status}")
                return DcvCheckResponse.model_validate_json(body)

        transport = Transport()
        coordinator = MpicCoordinator(transport, MpicCoordinatorConfiguration(perspectives, 5, 1, "bench-secret"))

        async def mpic() -> None:
            req = MpicDcvRequest(
                domain_or_ip_target=HOST,
                dcv_check_parameters=DcvAcmeTlsAlpn01ValidationParameters(key_authorization_hash=key_auth_hash),
                orchestration_parameters=MpicRequestOrchestrationParameters(perspective_count=5),
            )
            async with aiohttp.ClientSession() as session:
                transport.session = session
                resp = await coordinator.coordinate_mpic(req)
            passed = sum(1 for p in resp.perspectives if p.check_response.check_passed)
            assert resp.is_valid and passed == 5, (resp.is_valid, [p.check_response.errors for p in resp.perspectives])

        async def parallax_cold() -> None:
            v = await verify_with_notaries(HOST, 443, bundle=bundle, timeout=10, max_age=0)
            assert v.status == "consistent", v.summary

        async def parallax_warm() -> None:
            v = await verify_with_notaries(HOST, 443, bundle=bundle, timeout=10)
            assert v.status == "consistent", v.summary

        kinds = {"open_mpic": mpic, "parallax_cold": parallax_cold, "parallax_warm": parallax_warm}
        for fn in kinds.values():
            await fn()
        times, _ = await interleaved(NAME, kinds, runs=args.runs, max_seconds=args.max_seconds)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--max-seconds", type=float, default=150.0)
    args = ap.parse_args()
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    try:
        import open_mpic_core  # noqa: F401
        from importlib.metadata import version

        print(f"[{NAME}] open-mpic-core {version('open-mpic-core')}")
    except ImportError as exc:
        print(f"[{NAME}] cannot run: open-mpic-core is not importable ({exc}); pip install open-mpic-core")
        return 2
    why = port_443_free()
    if why:
        print(f"[{NAME}] cannot run: {why}")
        return 2
    times = eventloop.run(measure(args))
    med = {k: median(v) * 1000 for k, v in times.items()}
    for k, v in times.items():
        vs = sorted(x * 1000 for x in v)
        print(f"[{NAME}] {k:14s} median {med[k]:7.2f} ms  min {vs[0]:7.2f}  max {vs[-1]:7.2f}  (n={len(vs)})")
    lines = []
    for k, what in (("parallax_cold", "fresh probes, max_age=0"), ("parallax_warm", "notaries' cache")):
        r = med["open_mpic"] / med[k]
        lines.append(verdict_line(f"{NAME}_{k.split('_')[1]} (P2)", f"{med['open_mpic']:.2f} ms (open-mpic-core TLS-ALPN-01 DCV, 5 perspectives)",
                                  f"{med[k]:.2f} ms (Parallax verify_with_notaries, 5 notaries, {what})", r,
                                  f"open-mpic/Parallax time; goal >= {GOAL:g}", r >= GOAL))
    save(NAME, {"times_s": times, "medians_ms": med}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
