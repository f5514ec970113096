"""Latency of one cold observe (``max_age=0``) and where its time goes.

Subject:  one real notary (client.cluster.local_cluster: create_app + AppRunner,
          in this process) answering POST /v1/observe with ``max_age=0`` for a
          local TLS site (its own process), one request at a time over a
          kept-alive aiohttp session.
Baseline: one raw asyncio TLS handshake to the same site (``open_connection``,
          unverified context, abort), same process.
Breakdown: the notary's own coroutines are wrapped with timers for this run
          (the prober's probe and name resolution, the store's commit, the key
          history read if the store did not return it, the observation signing
          and the freshness batch), so the printed medians say where the
          round trip goes.  The wrappers cost a few microseconds each.
Rounds:   baseline and subject interleaved, order alternating (``_common.interleaved``).
Goal:     none (the figure feeds P1/P2 cold): ratio printed, ``n/a``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notary import eventloop  # noqa: E402
from bench._common import busy_processes, client_ctx, interleaved, median, raw_handshake, save, serve, verdict_line  # noqa: E402

NAME = "notary_cold_latency"
HOST = "site.bench.test"


def _timed(obj: Any, attr: str, label: str, phases: dict[str, list[float]]) -> None:
    """Replace the coroutine method ``obj.attr`` by one that records its wall time (ms) under ``label``."""
    orig: Callable[..., Awaitable[Any]] = getattr(obj, attr)

    async def wrapper(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await orig(*args, **kw)
        finally:
            phases.setdefault(label, []).append((time.perf_counter() - t0) * 1000)

    setattr(obj, attr, wrapper)


def _timed_sync(module: Any, attr: str, label: str, phases: dict[str, list[float]]) -> None:
    orig = getattr(module, attr)

    def wrapper(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig(*args, **kw)
        finally:
            phases.setdefault(label, []).append((time.perf_counter() - t0) * 1000)

    setattr(module, attr, wrapper)


async def run(port: int, runs: int, max_seconds: float) -> dict[str, Any]:
    import aiohttp

    import notary.service as service_module
    from client.cluster import local_cluster
    from client.devtools import StaticResolver
    from notary.server import SERVICE

    phases: dict[str, list[float]] = {}
    ctx = client_ctx()
    with tempfile.TemporaryDirectory(prefix="parallax-bench-coldlat-") as tmp:
        async with local_cluster(1, Path(tmp) / "c", resolver=StaticResolver({HOST: ["127.0.0.1"]}),
                                 ttl=3600, rate=1e6) as cluster:
            service = cluster.apps[0][SERVICE]
            _timed(service.prober, "probe", "probe (slots, resolve, connect, TLS)", phases)
            _timed(service.prober, "_resolve", "  of which: name resolution", phases)
            _timed(service.store, "add", "store commit (+ key history read)", phases)
            _timed(service.store, "key_history", "key history read (separate)", phases)
            _timed_sync(service_module, "sign_round", "sign the observation(s)", phases)
            submit = getattr(service.freshness, "submit", None)
            if submit is not None:  # (older code awaited service.stamp instead)
                def submit_timed(*args: Any) -> "asyncio.Future[str]":
                    t0 = time.perf_counter()
                    fut = submit(*args)
                    fut.add_done_callback(lambda _f: phases.setdefault(
                        "freshness batch (queued to signed)", []).append((time.perf_counter() - t0) * 1000))
                    return fut
                service.freshness.submit = submit_timed
            else:
                _timed(service, "stamp", "freshness batch (queued to signed)", phases)
            url = cluster.urls[0]
            async with aiohttp.ClientSession() as session:
                async def observe() -> None:
                    body = {"targets": [{"host": HOST, "port": port}], "nonce": secrets.token_urlsafe(18), "max_age": 0}
                    async with session.post(url + "/v1/observe", json=body) as resp:
                        doc = json.loads(await resp.read())
                    leaf = json.loads(base64.b64decode(doc["results"][0]["freshness"]["leaf"]))
                    assert resp.status == 200 and leaf["source"] == "fresh", (resp.status, leaf)

                async def handshake() -> None:
                    await raw_handshake("127.0.0.1", port, HOST, ctx)

                for _ in range(5):  # warm up both paths, then forget the phases
                    await observe()
                    await handshake()
                phases.clear()
                times, _cpu = await interleaved(NAME, {"baseline": handshake, "subject": observe}, runs=runs,
                                                max_seconds=max_seconds)
    return {"times": times, "phases": phases}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    args = ap.parse_args()
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    with serve("sites", {"count": 1, "names": [HOST]}) as sites:
        out = eventloop.run(run(sites.info["ports"][0], args.runs, args.max_seconds))
    times, phases = out["times"], out["phases"]
    subject, baseline = median(times["subject"]) * 1000, median(times["baseline"]) * 1000
    print(f"[{NAME}] {len(times['subject'])} cold observes; medians (ms) of each phase, in the notary:")
    breakdown = {}
    for label, values in phases.items():
        breakdown[label] = median(values)
        print(f"[{NAME}]   {label:42s} {median(values):7.3f} ms  (n={len(values)})")
    print(f"[{NAME}]   {'whole round trip, client side':42s} {subject:7.3f} ms")
    ratio = subject / baseline
    line = verdict_line(NAME, f"{subject:.3f} ms (one cold observe round trip, median of {len(times['subject'])})",
                        f"{baseline:.3f} ms (one raw TLS handshake to the same site)", ratio,
                        "no goal: feeds P1/P2 cold", None)
    save(NAME, {"subject_ms": subject, "baseline_ms": baseline, "ratio": ratio, "breakdown_ms": breakdown}, [line])
    return 0


if __name__ == "__main__":
    sys.exit(main())
