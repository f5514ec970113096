"""Benchmark 1: cached observe throughput of one notary vs a bare aiohttp handler.

Subject:  one real notary, ``parallax serve --workers 1`` (its own process: the
          production serving stack, connection guard included) answering
          POST /v1/observe for a target whose observation is cached (warmed
          once): every request binds its new nonce to the cached observation
          (protocol 2: a freshness leaf, signed in a batch with the other
          requests of the same event-loop turn; protocol 1 re-signed the whole
          observation).
Baseline: a bare aiohttp handler (own process) that reads the body and returns
          the bytes of a real cached notary answer (same size, same content type).
Load:     wrk (1 thread, 28 connections, a new nonce per request via observe.lua),
          the same for both, rounds interleaved baseline/subject.
Goal:     subject req/s / baseline req/s >= 0.6.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (  # noqa: E402
    BENCH, ServeProcesses, answer_source, busy_processes, decode_envelope_payload, median, save, serve, verdict_line,
)

NAME = "notary_cached"
GOAL = 0.6
HOST = "127.0.0.1"  # the target: a loopback TLS site (parallax serve resolves no test names)
#: Seconds between two wrk runs: the notary caps connections per client address (32, as many as wrk
#: opens), so it must see one run's connections closed before the next run opens its own.
SETTLE = 0.5


def post(url: str, body: dict) -> bytes:
    req = urllib.request.Request(url + "/v1/observe", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " "))


def wrk(url: str, port: int, *, seconds: int, connections: int, max_requests: int, host: str = HOST) -> dict:
    env = dict(os.environ, BENCH_TARGET_HOST=host, BENCH_TARGET_PORT=str(port),
               BENCH_RUN_ID=secrets.token_hex(4), BENCH_MAX_REQUESTS=str(max_requests))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
           "-s", str(BENCH / "observe.lua"), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped in between
    wrk_cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / wall
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)  # the latency distribution's line, not a "+/- Stdev" figure
    return {"rps": rps, "requests": total, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sock.group(1) if sock else None, "p50": p50.group(1) if p50 else None,
            "wrk_cpu": wrk_cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=28,
                    help="28, not 32: the notary caps connections per client address at 32, and wrk may reopen one before the notary saw it close")
    ap.add_argument("--max-requests", type=int, default=200_000, help="per wrk run (count bound)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    tmp = Path(tempfile.mkdtemp(prefix="parallax-bench-cached-"))
    with serve("sites", {"count": 1, "names": ["localhost"]}) as sites:
        port = sites.info["ports"][0]
        with ServeProcesses(1, tmp, extra=["--workers", "1"], ttl=3600) as notary:
            url = notary.urls[0]
            first = json.loads(post(url, {"targets": [{"host": HOST, "port": port}], "nonce": secrets.token_urlsafe(18)}))
            p = decode_envelope_payload(first["results"][0]["envelopes"][0])
            assert p["status"] == "ok" and answer_source(first["results"][0]) == "fresh", p
            cached_raw = post(url, {"targets": [{"host": HOST, "port": port}], "nonce": secrets.token_urlsafe(18)})
            p = decode_envelope_payload(json.loads(cached_raw)["results"][0]["envelopes"][0])
            assert p["status"] == "ok" and answer_source(json.loads(cached_raw)["results"][0]) == "cached", p
            body_file = tmp / "answer.json"
            body_file.write_bytes(cached_raw)
            probes_before = metric(url, "parallax_probes_total")
            print(f"[{NAME}] cached answer {len(cached_raw)} bytes; notary {url} (pid {notary.pids[0]}); "
                  f"site 127.0.0.1:{port}")
            with serve("static", {"body_file": str(body_file)}) as static:
                print(f"[{NAME}] static handler {static.info['url']} (pid {static.pid}) serving {static.info['bytes']} bytes")
                base_runs, subj_runs = [], []
                for r in range(args.rounds):
                    order = [("baseline", static.info["url"]), ("subject", url)]
                    if r % 2:
                        order.reverse()
                    for label, u in order:
                        time.sleep(SETTLE)
                        res = wrk(u, port, seconds=args.seconds, connections=args.connections, max_requests=args.max_requests)
                        (base_runs if label == "baseline" else subj_runs).append(res)
                        print(f"[{NAME}] round {r + 1} {label:8s} {res['rps']:9.1f} req/s  n={res['requests']} "
                              f"p50={res['p50']} non2xx={res['non2xx']} socket_errors={res['socket_errors']} "
                              f"wrk_cpu={res['wrk_cpu']:.2f} cores")
            probes_after = metric(url, "parallax_probes_total")
            check = {"source": answer_source(json.loads(post(
                url, {"targets": [{"host": HOST, "port": port}], "nonce": secrets.token_urlsafe(18)}))["results"][0])}
    shutil.rmtree(tmp, ignore_errors=True)
    bad = sum(r["non2xx"] for r in base_runs + subj_runs)
    subject, baseline = median(r["rps"] for r in subj_runs), median(r["rps"] for r in base_runs)
    ratio = subject / baseline
    print(f"[{NAME}] probes during the load: {probes_after - probes_before:.0f} (0 means every answer was cached); "
          f"last answer source={check['source']}; non-2xx answers: {bad}")
    line = verdict_line(NAME, f"{subject:.1f} req/s (notary, cached, median of {len(subj_runs)})",
                        f"{baseline:.1f} req/s (bare aiohttp, same body size)", ratio, f"goal >= {GOAL}",
                        ratio >= GOAL and bad == 0)
    save(NAME, {"subject_runs": subj_runs, "baseline_runs": base_runs, "ratio": ratio,
                "probes_during_load": probes_after - probes_before, "body_bytes": len(cached_raw)}, [line])
    return 0


if __name__ == "__main__":
    sys.exit(main())
