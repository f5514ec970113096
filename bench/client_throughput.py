"""Benchmark 5: client throughput, 1,000 targets x 5 notaries, vs the raw handshake rate.

Setup:    ``--sites`` (50) local TLS sites on distinct ports (own process) x
          ``--names`` (20) names each = 1,000 targets n<s>-<j>.bench.test;
          5 real notaries (local_cluster, own process) resolve every name to
          127.0.0.1 (StaticResolver); the client's own probe goes to the same
          site through ``connect_to``.
Subject:  verify_with_notaries for every target with ``--concurrency`` (16)
          checks in flight and one client.pool.NotaryPool (``session=``; at
          most 100 kept-alive notary connections), in this process.  Pass ``cold``: the notaries have never seen the targets
          (each probes); pass ``warm``: the same targets again (cached).
Baseline: raw asyncio TLS handshakes (unverified, then abort) to the same
          1,000 targets with the same concurrency, from this process.
Bounds:   1,000 checks a pass and ``--max-seconds`` per pass.
Goals (checks/s / handshakes/s): warm >= 0.25, cold >= 0.1.  The 5 notaries run on the
same machine and share its cores with the client, so a check costs the client's own
probe plus five notary answers (five probes when cold) of the same CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notary import eventloop  # noqa: E402
from bench._common import busy_processes, client_ctx, raw_handshake, save, serve, verdict_line  # noqa: E402

NAME = "client_throughput"
GOALS = {"warm": 0.25, "cold": 0.1}


async def bounded(items: list, conc: int, fn, max_seconds: float) -> tuple[float, int, collections.Counter]:  # type: ignore[no-untyped-def]
    """Run ``fn(item)`` for every item, ``conc`` at a time, stopping after ``max_seconds``."""
    it = iter(items)
    done = 0
    outcomes: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        nonlocal done
        for item in it:
            if time.monotonic() > deadline:
                return
            try:
                outcomes[await fn(item)] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                outcomes[f"error {type(exc).__name__}: {str(exc)[:60]}"] += 1
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return time.perf_counter() - t0, done, outcomes


async def measure(args: argparse.Namespace) -> dict:
    from client.api import verify_with_notaries
    from client.bundle import load_bundle
    from client.pool import NotaryPool

    with serve("sites", {"count": args.sites, "names": ["bench.test", "*.bench.test"]}) as sites:
        ports = sites.info["ports"]
        targets = [(f"n{s}-{j}.bench.test", p) for s, p in enumerate(ports) for j in range(args.names)]
        with serve("cluster", {"n": 5, "table": {n: ["127.0.0.1"] for n, _ in targets}}) as cluster:
            bundle = load_bundle(cluster.info["bundle"])
            print(f"[{NAME}] {len(targets)} targets ({len(ports)} sites x {args.names} names), 5 notaries (pid "
                  f"{cluster.pid}), concurrency {args.concurrency}")
            ctx = client_ctx()

            async def handshake(t: tuple[str, int]) -> str:
                await raw_handshake("127.0.0.1", t[1], t[0], ctx)
                return "ok"

            session = NotaryPool(limit=100)
            try:

                async def check(t: tuple[str, int]) -> str:
                    v = await verify_with_notaries(t[0], t[1], bundle=bundle, timeout=30, session=session,
                                                   connect_to=("127.0.0.1", t[1]))
                    return v.status

                out = {}
                for label, fn in (("baseline_1", handshake), ("cold", check), ("baseline_2", handshake), ("warm", check)):
                    elapsed, done, outcomes = await bounded(targets, args.concurrency, fn, args.max_seconds)
                    out[label] = {"elapsed_s": elapsed, "done": done, "rate": done / elapsed, "outcomes": dict(outcomes)}
                    print(f"[{NAME}] {label:10s} {done} in {elapsed:6.2f}s = {done / elapsed:8.1f}/s  {dict(outcomes)}")
            finally:
                await session.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=50)
    ap.add_argument("--names", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=180.0)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}; ulimit -n {soft}/{hard}")
    out = eventloop.run(measure(args))
    base = (out["baseline_1"]["rate"] + out["baseline_2"]["rate"]) / 2
    lines = []
    for label in ("cold", "warm"):
        r = out[label]
        good = r["outcomes"].get("consistent", 0)
        rate = good / r["elapsed_s"]
        lines.append(verdict_line(
            f"{NAME}_{label}", f"{rate:.1f} checks/s ({good} consistent of {r['done']} checks, "
            f"{'fresh probes' if label == 'cold' else 'cached'}, 5 notaries)",
            f"{base:.1f} handshakes/s (raw TLS, mean of 2 runs)", rate / base,
            f"checks/s / handshakes/s; goal >= {GOALS[label]}", rate / base >= GOALS[label]))
    save(NAME, {"runs": out, "baseline_rate": base, "args": vars(args)}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
