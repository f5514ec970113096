"""Benchmark: a check through an Oblivious HTTP relay vs the same check asked directly.

Setup:    one local TLS site for ``localhost`` (own process); 4 real notaries
          (client.cluster.local_cluster, own process); a fifth notary that is
          also a relay for them, in its own process, as a deployed relay is.
          The client runs in this process.
Subject:  ``verify_with_notaries(..., relay="auto")`` over the bundle of all
          5: the relay notary is picked and not asked, the other 4 are asked
          through it (warm: their observation caches and the client's
          gateway-key cache are filled once before timing).
Baseline: ``verify_with_notaries(...)`` asking the same 4 notaries directly,
          warm, in the same run.
Runs:     ``--runs`` (30) of each, interleaved; medians; ``wait_all`` so both
          wait for every answer.
Goal:     relayed median / direct median <= 1.3 on loopback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notary import eventloop  # noqa: E402
from bench._common import busy_processes, interleaved, median, save, serve, verdict_line  # noqa: E402

NAME = "relay_latency"
GOAL = 1.3
HOST = "localhost"


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    from client.api import verify_with_notaries
    from client.bundle import Bundle, BundleEntry, load_bundle

    with serve("sites", {"count": 1, "names": [HOST]}) as sites:
        port = sites.info["ports"][0]
        with serve("cluster", {"n": 4, "table": {HOST: ["127.0.0.1"]}}) as cluster, \
                serve("relay", {"bundle": cluster.info["bundle"]}) as relay_proc:
            direct_bundle = load_bundle(cluster.info["bundle"])
            bundle = Bundle((BundleEntry.from_json(relay_proc.info["entry"]), *direct_bundle.notaries))
            print(f"[{NAME}] site {HOST}:{port}; 4 notaries {cluster.info['urls']}; relay {relay_proc.info['url']} "
                  f"(pids {cluster.pid}, {relay_proc.pid})")

            async def relayed() -> None:
                v = await verify_with_notaries(HOST, port, bundle=bundle, timeout=10, relay="auto", wait_all=True)
                assert v.status == "consistent" and v.relays == ("relay",) and v.asked == 4, v.summary

            async def direct() -> None:
                v = await verify_with_notaries(HOST, port, bundle=direct_bundle, timeout=10, wait_all=True)
                assert v.status == "consistent" and v.asked == 4, v.summary

            kinds = {"direct": direct, "relayed": relayed}
            for fn in kinds.values():  # warm-up: notary caches, gateway keys, imports
                await fn()
            times, _ = await interleaved(NAME, kinds, runs=args.runs, max_seconds=args.max_seconds)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    args = ap.parse_args()
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    times = eventloop.run(measure(args))
    med = {k: median(v) * 1000 for k, v in times.items()}
    for k, v in times.items():
        vs = sorted(x * 1000 for x in v)
        print(f"[{NAME}] {k:8s} median {med[k]:7.2f} ms  min {vs[0]:7.2f}  max {vs[-1]:7.2f}  (n={len(vs)})")
    ratio = med["relayed"] / med["direct"]
    print(f"[{NAME}] relayed/direct = {ratio:.3f} (goal <= {GOAL}): {'MET' if ratio <= GOAL else 'MISSED'}")
    lines = [verdict_line(NAME, f"{med['relayed']:.2f} ms (check via an OHTTP relay, 4 warm notaries, median)",
                          f"{med['direct']:.2f} ms (the same 4 notaries asked directly, median)", ratio,
                          f"goal <= {GOAL}", ratio <= GOAL)]
    save(NAME, {"times_s": times, "medians_ms": med, "ratio": ratio}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
