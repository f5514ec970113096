"""Benchmark 3: notary resident memory at 1,000 concurrent observe requests.

One real notary (own process) and ``--sites`` local TLS sites (own process).
A load generator process opens ``--requests`` (1,000) connections at once, each
POSTing /v1/observe for a distinct target (t<i>.bench.test, mapped to 127.0.0.1):

* phase ``cold``:   max_age=0, every request needs a fresh probe (queued behind
                    the notary's probe caps), the heaviest case;
* phase ``cached``: the same 1,000 targets again, answered from the cache.

The notary's RSS is sampled every 20 ms (psutil, else /proc/PID/status) and
its VmHWM (kernel high-water mark) read at the end.  Goal: peak <= 150 MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import BENCH, PY, ROOT, busy_processes, save, serve, verdict_line  # noqa: E402

NAME = "notary_rss"
GOAL_MB = 100.0  # P5
MB = 1024 * 1024


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def rss_reader(pid: int):  # type: ignore[no-untyped-def]
    try:
        import psutil

        p = psutil.Process(pid)
        return (lambda: p.memory_info().rss), "psutil"
    except ImportError:
        return (lambda: proc_status(pid)["VmRSS"]), "/proc/PID/status VmRSS"


class Sampler(threading.Thread):
    def __init__(self, read, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.read, self.interval, self.peak, self.samples = read, interval, 0, 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.peak = max(self.peak, self.read())
                self.samples += 1
            except Exception:  # noqa: BLE001 - the process may be gone
                return
            time.sleep(self.interval)


def burst(url: str, targets: list[dict], count: int, max_age: int | None) -> dict:
    spec = {"mode": "burst", "url": url, "targets": targets, "count": count, "timeout": 120}
    if max_age is not None:
        spec["max_age"] = max_age
    out = subprocess.run([PY, str(BENCH / "_load.py"), json.dumps(spec)], capture_output=True, text=True,
                         timeout=300, cwd=str(ROOT), stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=20)
    args = ap.parse_args()
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    names = [f"t{i}.bench.test" for i in range(args.requests)]
    with serve("sites", {"count": args.sites, "names": ["bench.test", "*.bench.test"]}) as sites:
        ports = sites.info["ports"]
        targets = [{"host": n, "port": ports[i % len(ports)]} for i, n in enumerate(names)]
        with serve("cluster", {"n": 1, "table": {n: ["127.0.0.1"] for n in names}}) as notary:
            url, pid = notary.info["urls"][0], notary.pid
            read, how = rss_reader(pid)
            burst(url, targets[:1], 1, None)  # one request: the notary has served once
            time.sleep(0.5)
            before = read()
            print(f"[{NAME}] notary pid {pid} at {url}; RSS via {how}; RSS before load {before / MB:.1f} MB")
            phases = {}
            for phase, max_age in (("cold", 0), ("cached", None)):
                s = Sampler(read)
                s.start()
                res = burst(url, targets, args.requests, max_age)
                time.sleep(0.3)
                s.stop_flag.set()
                s.join()
                phases[phase] = dict(res, peak_rss=s.peak, samples=s.samples)
                print(f"[{NAME}] phase {phase:6s}: {res['count']} concurrent requests in {res['elapsed_s']:.1f}s, "
                      f"HTTP {res['codes']}, probe statuses {res['statuses']}; peak RSS {s.peak / MB:.1f} MB "
                      f"({s.samples} samples)")
            after = read()
            hwm = proc_status(pid).get("VmHWM", 0)
    peak = max(max(p["peak_rss"] for p in phases.values()), hwm)
    ok200 = all(p["codes"].get("200", 0) == args.requests for p in phases.values())
    print(f"[{NAME}] RSS after load {after / MB:.1f} MB; VmHWM {hwm / MB:.1f} MB; all answers HTTP 200: {ok200}")
    line = verdict_line(NAME, f"{peak / MB:.1f} MB peak RSS at {args.requests} concurrent observe requests",
                        f"{before / MB:.1f} MB RSS before load", peak / (GOAL_MB * MB),
                        f"ratio = peak / {GOAL_MB:.0f} MB; goal peak <= {GOAL_MB:.0f} MB", peak <= GOAL_MB * MB and ok200)
    save(NAME, {"before": before, "after": after, "vmhwm": hwm, "phases": phases, "rss_source": how}, [line])
    return 0


if __name__ == "__main__":
    sys.exit(main())
