"""Benchmark 4 (P1, P1a): verify_with_notaries latency and client CPU vs one direct TLS handshake.

Setup:    one local TLS site for ``localhost`` (own process); 5 notaries, each
          its own ``parallax serve`` process (bench._common.ServeProcesses).
          The client runs in this process.
Subject:  ``verify_with_notaries("localhost", port, bundle=...)`` as a library
          user calls it (no session passed; early decision):
          warm  = the notaries answer from their cache (warmed once);
          cold  = ``max_age=0``: every notary probes afresh.
Baseline: one direct TLS handshake to the same site from this process
          (asyncio.open_connection to 127.0.0.1 with SNI, unverified context,
          abort).  Also shown, for information only: client.api.client_probe.
Figures:  P1  wall-clock median of each, interleaved (order alternates per round);
          P1a client CPU time (time.process_time, every thread of this
          process) per warm check / per direct handshake, median.
Runs:     ``--runs`` (30) of each; bounded by ``--max-seconds``.
Goals:    P1 warm <= 2, P1 cold <= 4, P1a <= 1.5.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notary import eventloop  # noqa: E402
from bench._common import (  # noqa: E402
    ServeProcesses, busy_processes, client_ctx, interleaved, median, raw_handshake, save, serve, verdict_line,
)

NAME = "client_latency"
GOAL_WARM, GOAL_COLD, GOAL_CPU = 2.0, 4.0, 1.5
HOST = "localhost"


async def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from client.api import client_probe, verify_with_notaries
    from client.bundle import load_bundle
    from notary.core import Target

    tmp = Path(tempfile.mkdtemp(prefix="parallax-bench-latency-"))
    try:
        with serve("sites", {"count": 1, "names": [HOST]}) as sites, ServeProcesses(5, tmp) as notaries:
            port = sites.info["ports"][0]
            bundle = load_bundle(str(notaries.bundle_path))
            print(f"[{NAME}] site {HOST}:{port}; 5 parallax serve processes {notaries.urls} (pids {notaries.pids})")
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

            kinds = {"baseline": baseline, "client_probe": probe, "warm": warm, "cold": cold}
            for _ in range(3):  # warm-up: caches, imports, first connections
                for fn in kinds.values():
                    await fn()
            times, cpu = await interleaved(NAME, kinds, runs=args.runs, max_seconds=args.max_seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return times, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    args = ap.parse_args()
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    times, cpu = eventloop.run(measure(args))
    med = {k: median(v) * 1000 for k, v in times.items()}
    cmed = {k: median(v) * 1000 for k, v in cpu.items()}
    for k, v in times.items():
        vs = sorted(x * 1000 for x in v)
        print(f"[{NAME}] {k:12s} median {med[k]:7.2f} ms  min {vs[0]:7.2f}  max {vs[-1]:7.2f}  "
              f"client CPU median {cmed[k]:6.2f} ms  (n={len(vs)})")
    rw, rc = med["warm"] / med["baseline"], med["cold"] / med["baseline"]
    rcpu = cmed["warm"] / cmed["baseline"]
    base = f"{med['baseline']:.2f} ms (one direct TLS handshake, median)"
    lines = [
        verdict_line(f"{NAME}_warm (P1)", f"{med['warm']:.2f} ms (verify_with_notaries, 5 warm notaries, median)",
                     base, rw, f"goal <= {GOAL_WARM}", rw <= GOAL_WARM),
        verdict_line(f"{NAME}_cold (P1)", f"{med['cold']:.2f} ms (verify_with_notaries, max_age=0, median)",
                     base, rc, f"goal <= {GOAL_COLD}", rc <= GOAL_COLD),
        verdict_line(f"{NAME}_cpu (P1a)", f"{cmed['warm']:.2f} ms client CPU per warm check (median)",
                     f"{cmed['baseline']:.2f} ms client CPU per direct handshake (median)", rcpu,
                     f"goal <= {GOAL_CPU}", rcpu <= GOAL_CPU),
    ]
    print(f"[{NAME}] for information: client_probe median {med['client_probe']:.2f} ms, CPU {cmed['client_probe']:.2f} ms; "
          f"warm/client_probe {med['warm'] / med['client_probe']:.2f}, cold/client_probe {med['cold'] / med['client_probe']:.2f}")
    save(NAME, {"times_s": times, "cpu_s": cpu, "medians_ms": med, "cpu_medians_ms": cmed,
                "ratio_warm": rw, "ratio_cold": rc, "ratio_cpu": rcpu}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
