"""Benchmark 7: cached observe throughput of ``parallax serve --workers 2`` vs ``--workers 1``.

Subject:  one ``parallax serve --workers 2`` process group (two SO_REUSEPORT
          workers over one SQLite store) answering POST /v1/observe from its
          cache (warmed through both workers first).
Baseline: the same notary (same key, same store) as ``--workers 1``.
Load:     wrk (1 thread, ``--connections`` connections, a new nonce per
          request via observe.lua), rounds interleaved baseline/subject.
          Connections are spread by the kernel across the workers.
Goal:     workers-2 req/s / workers-1 req/s >= 1.5 (a machine with at least
          2 free cores; wrk itself needs a share of one, so a 2-core machine
          cannot show the whole gain).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ServeProcesses, busy_processes, group_cpu, median, save, serve, verdict_line  # noqa: E402
from bench.notary_cached import wrk  # noqa: E402

NAME = "notary_workers"
GOAL = 1.5
HOST = "127.0.0.1"


def warm(url: str, port: int, times: int = 40) -> None:
    body = json.dumps({"targets": [{"host": HOST, "port": port}], "nonce": secrets.token_urlsafe(18)}).encode()
    for _ in range(times):  # a new connection each: reaches every worker
        req = urllib.request.Request(url + "/v1/observe", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
    # The notary caps connections per client address (32): let it see the warm-up's closed
    # connections go before wrk opens its own (wrk uses fewer than the cap, see --connections).
    time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    # 28, not 32: the notary caps connections per client address at 32 and wrk's come from one
    # address; at exactly 32, a warm-up connection the notary had not yet seen close made one of
    # wrk's get a 429 now and then, and the run counted as invalid.
    ap.add_argument("--connections", type=int, default=28)
    ap.add_argument("--max-requests", type=int, default=200_000)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}; cpus {os.cpu_count()}")
    tmp = Path(tempfile.mkdtemp(prefix="parallax-bench-workers-"))
    runs: dict[int, list[dict]] = {1: [], 2: []}
    try:
        with serve("sites", {"count": 1, "names": ["localhost"]}) as sites:
            port = sites.info["ports"][0]
            for r in range(args.rounds):
                order = [1, 2] if r % 2 == 0 else [2, 1]
                for n in order:
                    with ServeProcesses(1, tmp, extra=["--workers", str(n)], ttl=3600) as notary:
                        url = notary.urls[0]
                        warm(url, port)
                        cpu0, t0 = group_cpu(notary.pids[0]), time.monotonic()
                        res = wrk(url, port, seconds=args.seconds, connections=args.connections,
                                  max_requests=args.max_requests, host=HOST)
                        cpu1, wall = group_cpu(notary.pids[0]), time.monotonic() - t0
                        # Cores each process of the group used during the load (parent first, then workers).
                        res["notary_cpu"] = [round((cpu1[p] - cpu0.get(p, 0.0)) / wall, 2) for p in cpu1]
                    runs[n].append(res)
                    print(f"[{NAME}] round {r + 1} workers={n} {res['rps']:9.1f} req/s  n={res['requests']} "
                          f"p50={res['p50']} non2xx={res['non2xx']} socket_errors={res['socket_errors']} "
                          f"wrk_cpu={res['wrk_cpu']:.2f} cores notary_cpu={res['notary_cpu']} cores")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    one, two = median(r["rps"] for r in runs[1]), median(r["rps"] for r in runs[2])
    bad = sum(r["non2xx"] for r in runs[1] + runs[2])
    ratio = two / one
    line = verdict_line(NAME, f"{two:.1f} req/s (parallax serve --workers 2, cached, median of {len(runs[2])})",
                        f"{one:.1f} req/s (--workers 1)", ratio, f"goal >= {GOAL}", ratio >= GOAL and bad == 0)
    save(NAME, {"runs": {str(k): v for k, v in runs.items()}, "ratio": ratio, "non2xx": bad}, [line])
    return 0


if __name__ == "__main__":
    sys.exit(main())
