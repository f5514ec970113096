"""Benchmark 2: cold probe throughput of one notary vs a raw asyncio TLS handshake loop.

Targets:  ``--targets`` (200) distinct host:port pairs: names t<i>.bench.test
          spread over ``--sites`` (20) local TLS sites on distinct ports (own
          process).  ``--addresses distinct`` (the default): site i listens on
          its own loopback address 127.0.1.<i+1> and the notary's
          StaticResolver maps each name to its site's address, as real targets
          have distinct addresses; ``--addresses shared`` (the method until
          issue 11's fifth session): every site and name on 127.0.0.1, so the
          notary's per-address probe cap (4 at once) bounds the whole run.
Subject:  one real notary (own process), POST /v1/observe with max_age=0 and
          one target a request, cycling over the targets, so every request
          misses the cache and probes (sampled answers are checked: status ok,
          source fresh).
Baseline: asyncio.open_connection(ssl=unverified ctx, server_hostname=name)
          handshake, then abort, over the same targets.
Load:     bench/_load.py in its own process, the same concurrency for both,
          rounds interleaved.  Goal: subject probes/s / baseline handshakes/s >= 0.7.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import busy_processes, median, process_cpu, run_load, save, serve, verdict_line  # noqa: E402

NAME = "notary_cold"
GOAL = 0.7


def probes_total(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("parallax_probes_total"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=200)
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--addresses", choices=("distinct", "shared"), default="distinct",
                    help="one loopback address per site (default) or all on 127.0.0.1")
    ap.add_argument("--max-ops", type=int, default=20_000, help="per run (count bound)")
    args = ap.parse_args()
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    names = [f"t{i}.bench.test" for i in range(args.targets)]
    if args.addresses == "distinct":
        if not 1 <= args.sites <= 254:
            ap.error("--sites must be 1..254 with --addresses distinct")
        hosts = [f"127.0.1.{i + 1}" for i in range(args.sites)]
    else:
        hosts = ["127.0.0.1"] * args.sites
    with serve("sites", {"count": args.sites, "hosts": hosts, "names": ["bench.test", "*.bench.test"]}) as sites:
        ports = sites.info["ports"]
        # (name, site address, site port): target i is served by site i mod --sites.
        triples = [(n, hosts[i % len(ports)], ports[i % len(ports)]) for i, n in enumerate(names)]
        pairs = [(n, p) for n, _, p in triples]
        with serve("cluster", {"n": 1, "table": {n: [ip] for n, ip, _ in triples}}) as notary:
            url = notary.info["urls"][0]
            print(f"[{NAME}] {len(pairs)} distinct targets over {len(ports)} sites on {len(set(hosts))} loopback "
                  f"address(es) ({args.addresses}); notary {url} (pid {notary.pid}); concurrency {args.concurrency}")
            common = {"concurrency": args.concurrency, "duration": args.seconds, "warmup": 1.0, "max_ops": args.max_ops}
            subject_spec = dict(common, mode="observe", url=url, max_age=0, check_every=10,
                                targets=[{"host": n, "port": p} for n, p in pairs])
            base_spec = dict(common, mode="handshake", targets=[{"ip": ip, "port": p, "sni": n} for n, ip, p in triples])
            subj_runs, base_runs = [], []
            before = probes_total(url)
            for r in range(args.rounds):
                order = [("baseline", base_spec), ("subject", subject_spec)]
                if r % 2:
                    order.reverse()
                for label, spec in order:
                    cpu0, probes0 = process_cpu(notary.pid), probes_total(url)
                    sites0 = process_cpu(sites.pid)
                    res = run_load(spec)
                    sites1 = process_cpu(sites.pid)
                    cpu1, probes1 = process_cpu(notary.pid), probes_total(url)
                    if sites0 is not None and sites1 is not None:
                        # CPU per operation issued (warm-up included), by process: where the 2 cores went.
                        res["cpu_ms_per_op"] = {"sites": 1000 * (sites1 - sites0) / res["issued"],
                                                "load": 1000 * res["cpu_s"] / res["issued"]}
                    if label == "subject" and cpu0 is not None and cpu1 is not None and probes1 > probes0:
                        # The notary's CPU (every thread) per probe over the whole run, warm-up included.
                        res["notary_cpu_ms_per_probe"] = 1000 * (cpu1 - cpu0) / (probes1 - probes0)
                    (base_runs if label == "baseline" else subj_runs).append(res)
                    extra = (f" statuses={res.get('statuses')} sources={res.get('sources')}"
                             f" notary_cpu={res.get('notary_cpu_ms_per_probe', float('nan')):.3f}ms/probe"
                             if label == "subject" else "")
                    print(f"[{NAME}] round {r + 1} {label:8s} {res['rate']:8.1f}/s  n={res['ops']} errors={res['error_count']} "
                          f"p50={res['lat_p50_ms']:.1f}ms{extra}" + (f" {res['errors']}" if res["error_count"] else ""))
            probes = probes_total(url) - before
    subject, baseline = median(r["rate"] for r in subj_runs), median(r["rate"] for r in base_runs)
    ratio = subject / baseline
    not_fresh = sum(v for r in subj_runs for k, v in r["sources"].items() if k != "fresh")
    not_ok = sum(v for r in subj_runs for k, v in r["statuses"].items() if k != "ok")
    errors = sum(r["error_count"] for r in subj_runs + base_runs)
    issued = sum(r["issued"] for r in subj_runs)
    cpu = [r["notary_cpu_ms_per_probe"] for r in subj_runs if "notary_cpu_ms_per_probe" in r]
    if cpu:
        print(f"[{NAME}] notary CPU per probe (all threads, median of {len(cpu)}): {median(cpu):.3f} ms")
    split = {label: {k: median(r["cpu_ms_per_op"][k] for r in runs) for k in ("sites", "load")}
             for label, runs in (("baseline", base_runs), ("subject", subj_runs))
             if all("cpu_ms_per_op" in r for r in runs)}
    if cpu and len(split) == 2:
        b, s = split["baseline"], split["subject"]
        print(f"[{NAME}] CPU per operation (ms, medians): baseline sites {b['sites']:.3f} + load generator "
              f"{b['load']:.3f} (its handshake); subject sites {s['sites']:.3f} + load generator {s['load']:.3f} "
              f"+ notary {median(cpu):.3f}")
        # Both runs keep the 2 cores about equally busy, so the rate goes as 1 / (CPU per operation).  A notary
        # whose whole cost per probe were the baseline's client handshake would reach about this ratio:
        ceiling = (b["sites"] + b["load"]) / (s["sites"] + s["load"] + b["load"])
        print(f"[{NAME}] ceiling estimate: a notary spending only a raw handshake's client CPU per probe "
              f"({b['load']:.3f} ms) would reach a ratio of about {ceiling:.2f}")
    print(f"[{NAME}] notary probes counted by /metrics: {probes:.0f} for {issued} observe requests issued; "
          f"sampled answers not fresh: {not_fresh}, not ok: {not_ok}; request errors: {errors}")
    valid = not_fresh == 0 and not_ok == 0 and errors == 0
    line = verdict_line(NAME, f"{subject:.1f} probes/s (notary observe, max_age=0, median of {len(subj_runs)})",
                        f"{baseline:.1f} handshakes/s (raw asyncio TLS)", ratio, f"goal >= {GOAL}",
                        ratio >= GOAL and valid)
    save(NAME, {"subject_runs": subj_runs, "baseline_runs": base_runs, "ratio": ratio, "probes_metric": probes,
                "args": vars(args)}, [line])
    return 0


if __name__ == "__main__":
    sys.exit(main())
