"""Benchmark 4: verify_with_notaries latency with 5 local notaries vs one direct TLS probe.

Setup:    one local TLS site for ``localhost`` (own process), 5 real notaries
          (client.cluster.local_cluster, own process, StaticResolver
          localhost -> 127.0.0.1).  The client runs in this process.
Subject:  ``verify_with_notaries("localhost", port, bundle=...)`` as a library
          user calls it (its own aiohttp session each call, early decision):
          warm  = the notaries answer from their cache (warmed once);
          cold  = ``max_age=0``: every notary probes afresh.
Baseline: one direct TLS handshake to the same target from this process
          (asyncio.open_connection, unverified context, abort).  Also shown,
          for information only: client.api.client_probe (Parallax's own
          prober) and a warm check with a caller-supplied reused session.
Runs:     ``--runs`` (30) of each, interleaved; medians.
Goals:    warm median / baseline median <= 1.5; cold <= 3.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import busy_processes, client_ctx, median, raw_handshake, save, serve, verdict_line  # noqa: E402

NAME = "client_latency"
GOAL_WARM, GOAL_COLD = 1.5, 3.0
HOST = "localhost"


async def measure(args: argparse.Namespace) -> dict:
    from client.api import client_probe, verify_with_notaries
    from client.bundle import load_bundle
    from notary.core import Target

    with serve("sites", {"count": 1, "names": [HOST]}) as sites:
        port = sites.info["ports"][0]
        with serve("cluster", {"n": 5, "table": {HOST: ["127.0.0.1"]}}) as cluster:
            bundle = load_bundle(cluster.info["bundle"])
            print(f"[{NAME}] site {HOST}:{port}; 5 notaries {cluster.info['urls']} (pid {cluster.pid})")
            ctx = client_ctx()
            target = Target.parse(HOST, port)

            async def baseline() -> None:
                await raw_handshake("127.0.0.1", port, HOST, ctx)

            async def probe() -> None:
                v = await client_probe(target)
                assert v.status == "ok", v

            async def warm() -> None:
                v = await verify_with_notaries(HOST, port, bundle=bundle, timeout=10)
                assert v.status == "consistent", v.summary

            async def cold() -> None:
                v = await verify_with_notaries(HOST, port, bundle=bundle, timeout=10, max_age=0)
                assert v.status == "consistent", v.summary

            import aiohttp

            session = aiohttp.ClientSession()

            async def warm_session() -> None:  # for information: a caller-supplied, reused session
                v = await verify_with_notaries(HOST, port, bundle=bundle, timeout=10, session=session)
                assert v.status == "consistent", v.summary

            kinds = {"baseline": baseline, "client_probe": probe, "warm": warm, "cold": cold,
                     "warm_session": warm_session}
            for fn in kinds.values():  # warm-up: caches, imports, first connections
                await fn()
            times: dict[str, list[float]] = {k: [] for k in kinds}
            deadline = time.monotonic() + args.max_seconds
            for i in range(args.runs):
                order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
                for k in order:
                    t0 = time.perf_counter()
                    await kinds[k]()
                    times[k].append(time.perf_counter() - t0)
                if time.monotonic() > deadline:
                    print(f"[{NAME}] time bound reached after {i + 1} runs")
                    break
            await session.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    args = ap.parse_args()
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    times = asyncio.run(measure(args))
    med = {k: median(v) * 1000 for k, v in times.items()}
    for k, v in times.items():
        vs = sorted(x * 1000 for x in v)
        print(f"[{NAME}] {k:12s} median {med[k]:7.2f} ms  min {vs[0]:7.2f}  max {vs[-1]:7.2f}  (n={len(vs)})")
    rw, rc = med["warm"] / med["baseline"], med["cold"] / med["baseline"]
    lines = [
        verdict_line(f"{NAME}_warm", f"{med['warm']:.2f} ms (verify_with_notaries, 5 warm notaries, median)",
                     f"{med['baseline']:.2f} ms (one direct TLS handshake, median)", rw, f"goal <= {GOAL_WARM}", rw <= GOAL_WARM),
        verdict_line(f"{NAME}_cold", f"{med['cold']:.2f} ms (verify_with_notaries, max_age=0, median)",
                     f"{med['baseline']:.2f} ms (one direct TLS handshake, median)", rc, f"goal <= {GOAL_COLD}", rc <= GOAL_COLD),
    ]
    print(f"[{NAME}] for information: client_probe median {med['client_probe']:.2f} ms; "
          f"warm/client_probe {med['warm'] / med['client_probe']:.2f}, cold/client_probe {med['cold'] / med['client_probe']:.2f}; "
          f"warm with a reused session (session=...) {med['warm_session']:.2f} ms = {med['warm_session'] / med['baseline']:.2f}x baseline")
    save(NAME, {"times_s": times, "medians_ms": med, "ratio_warm": rw, "ratio_cold": rc}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
