"""Benchmark 12: what uvloop buys: the same work on uvloop and on asyncio's own loop, in one run.

Part 1, a client's warm check: ``verify_with_notaries`` with 5 warm notaries
          (each its own ``parallax serve`` process, on uvloop).  Only the client's
          loop changes: every round runs ``--checks`` checks on uvloop and as many
          on asyncio's loop (order alternating), each batch in its own
          ``notary.eventloop.run`` (a fresh loop and connection pool; its first
          ``--warmup`` checks are not counted).  Figures: median latency and client
          CPU (``time.process_time``) per check, uvloop / asyncio.
Part 1b, the notaries' side of it: the same checks, the client on uvloop, asked
          alternately of 5 notaries on uvloop and 5 on asyncio's loop (two sets of
          processes, two bundles).  Figure: median latency, uvloop / asyncio.
Part 2, a notary's cold capacity: ``notary_cold.py``'s method (POST /v1/observe
          with max_age=0 over 200 targets on 20 sites, one loopback address each,
          concurrency 32) against two notaries, one on each loop (``PARALLAX_LOOP``
          in its environment); the load generator runs on uvloop for both; rounds
          interleaved.  Figure: probes/s, uvloop / asyncio.
No goal (it informs the choice of loop, ``notary/eventloop.py``); bounded by
``--rounds`` and each load run's duration and ``max_ops``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notary import eventloop  # noqa: E402
from bench._common import ServeProcesses, busy_processes, median, run_load, save, serve, verdict_line  # noqa: E402

NAME = "event_loop"
LOOPS = ("uvloop", "asyncio")


@contextlib.contextmanager
def _loop_env(loop: str) -> Iterator[None]:
    """``PARALLAX_LOOP=loop`` for the children started inside (they inherit the environment)."""
    old = os.environ.get(eventloop.ENV)
    os.environ[eventloop.ENV] = loop
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(eventloop.ENV, None)
        else:
            os.environ[eventloop.ENV] = old


async def _checks(port: int, bundle: Any, n: int, warmup: int) -> tuple[list[float], list[float]]:
    from client.api import verify_with_notaries

    wall, cpu = [], []
    for i in range(warmup + n):
        c0, t0 = time.process_time(), time.perf_counter()
        v = await verify_with_notaries("localhost", port, bundle=bundle, timeout=10)
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        assert v.status == "consistent", v.summary
    return wall, cpu


def client_part(args: argparse.Namespace, vary: str) -> dict[str, dict[str, list[float]]]:
    """``vary="client"``: the client's loop alternates; ``"notaries"``: which set of notaries is asked."""
    from client.bundle import load_bundle

    out: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in LOOPS}
    tmp = Path(tempfile.mkdtemp(prefix="parallax-bench-loop-"))
    try:
        with contextlib.ExitStack() as stack:
            sites = stack.enter_context(serve("sites", {"count": 1, "names": ["localhost"]}))
            port = sites.info["ports"][0]
            bundles = {}
            for loop in (LOOPS if vary == "notaries" else ("uvloop",)):
                with _loop_env(loop):
                    sets = stack.enter_context(ServeProcesses(5, tmp / loop))
                bundles[loop] = load_bundle(str(sets.bundle_path))
            deadline = time.monotonic() + args.max_seconds
            for r in range(args.rounds):
                for loop in (LOOPS if r % 2 == 0 else LOOPS[::-1]):
                    bundle = bundles[loop] if vary == "notaries" else bundles["uvloop"]
                    wall, cpu = eventloop.run(_checks(port, bundle, args.checks, args.warmup),
                                              loop=loop if vary == "client" else "uvloop")
                    out[loop]["wall"] += wall
                    out[loop]["cpu"] += cpu
                if time.monotonic() > deadline:
                    print(f"[{NAME}] time bound reached after {r + 1} rounds")
                    break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def notary_part(args: argparse.Namespace) -> dict[str, list[float]]:
    names = [f"t{i}.bench.test" for i in range(200)]
    hosts = [f"127.0.1.{i + 1}" for i in range(20)]
    rates: dict[str, list[float]] = {k: [] for k in LOOPS}
    with serve("sites", {"count": 20, "hosts": hosts, "names": ["bench.test", "*.bench.test"]}) as sites:
        ports = sites.info["ports"]
        triples = [(n, hosts[i % 20], ports[i % 20]) for i, n in enumerate(names)]
        table = {n: [ip] for n, ip, _ in triples}
        with contextlib.ExitStack() as stack:
            urls = {}
            for loop in LOOPS:
                with _loop_env(loop):
                    urls[loop] = stack.enter_context(serve("cluster", {"n": 1, "table": table})).info["urls"][0]
            for r in range(args.rounds):
                for loop in (LOOPS if r % 2 == 0 else LOOPS[::-1]):
                    spec = {"concurrency": 32, "duration": args.seconds, "warmup": 1.0, "max_ops": 20_000,
                            "mode": "observe", "url": urls[loop], "max_age": 0, "check_every": 10,
                            "targets": [{"host": n, "port": p} for n, _, p in triples]}
                    with _loop_env("uvloop"):
                        res = run_load(spec)
                    if res["error_count"] or set(res["statuses"]) != {"ok"}:
                        raise RuntimeError(f"{loop} notary: errors {res['errors']} statuses {res['statuses']}")
                    rates[loop].append(res["rate"])
                    print(f"[{NAME}] round {r + 1} notary on {loop:7s} {res['rate']:8.1f} probes/s")
    return rates


def _line(name: str, value: dict[str, float], fmt: str, on_uvloop: str, on_asyncio: str, better: str) -> str:
    """The RESULT line of one figure: uvloop's value over asyncio's (no goal)."""
    return verdict_line(f"{NAME}_{name}", f"{value['uvloop']:{fmt}} {on_uvloop}", f"{value['asyncio']:{fmt}} {on_asyncio}",
                        value["uvloop"] / value["asyncio"], f"{better} is better; no goal", None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--checks", type=int, default=40, help="counted checks per loop per round")
    ap.add_argument("--warmup", type=int, default=5, help="uncounted checks before them (new loop, new pool)")
    ap.add_argument("--seconds", type=float, default=6.0, help="duration of each notary load run")
    ap.add_argument("--max-seconds", type=float, default=120.0)
    args = ap.parse_args()
    if eventloop.chosen("auto") != "uvloop":
        print(f"[{NAME}] uvloop is not installed here: nothing to compare")
        return 1
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    client = client_part(args, "client")
    asked = client_part(args, "notaries")
    rates = notary_part(args)
    wall = {k: median(v["wall"]) * 1000 for k, v in client.items()}
    cpu = {k: median(v["cpu"]) * 1000 for k, v in client.items()}
    nwall = {k: median(v["wall"]) * 1000 for k, v in asked.items()}
    rate = {k: median(v) for k, v in rates.items()}
    for k in LOOPS:
        print(f"[{NAME}] {k:7s} client: warm check median {wall[k]:6.2f} ms, client CPU {cpu[k]:6.2f} ms "
              f"(n={len(client[k]['wall'])}); notaries: warm check median {nwall[k]:6.2f} ms "
              f"(n={len(asked[k]['wall'])}); notary cold {rate[k]:7.1f} probes/s (median of {len(rates[k])})")
    lines = [
        _line("check_latency", wall, ".2f", "ms (warm check, client on uvloop)", "ms (client on asyncio's loop)", "lower"),
        _line("check_cpu", cpu, ".2f", "ms client CPU per warm check on uvloop", "ms on asyncio's loop", "lower"),
        _line("notaries_latency", nwall, ".2f", "ms (warm check, 5 notaries on uvloop)",
              "ms (5 notaries on asyncio's loop)", "lower"),
        _line("notary_cold", rate, ".1f", "probes/s (notary on uvloop)", "probes/s (notary on asyncio's loop)", "higher"),
    ]
    save(NAME, {"client": client, "notaries": asked, "notary_rates": rates, "args": vars(args)}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
