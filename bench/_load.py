"""Python load generator, run as its own process: ``python bench/_load.py 'JSON spec'``.

Modes (``spec["mode"]``):

* ``observe``   POST /v1/observe to ``url``, one target a request, cycling over
                ``targets``, a new nonce each time, ``max_age`` if given.  Every
                ``check_every``-th answer is decoded and its probe status and
                source (fresh/cached) are tallied, so a fast failure cannot pass
                for throughput.
* ``handshake`` a raw asyncio TLS handshake (open_connection with an unverified
                context, then abort) cycling over ``targets`` ({ip, port, sni}).
* ``burst``     ``count`` POST /v1/observe at once (one connection each), for RSS.

Workers: ``concurrency``.  Bounded by ``max_ops`` and ``duration`` seconds
(ops finishing in the first ``warmup`` seconds are not counted).  Prints one
JSON line with the figures.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notary import eventloop  # noqa: E402
from bench._common import client_ctx, decode_envelope_payload, answer_source, raw_handshake  # noqa: E402


async def run_ops(spec: dict[str, Any], op: Any) -> dict[str, Any]:
    conc, duration = int(spec["concurrency"]), float(spec["duration"])
    warmup, max_ops = float(spec.get("warmup", 0.0)), int(spec["max_ops"])
    started, cpu_started = time.monotonic(), time.process_time()
    t_count = started + warmup
    deadline = started + warmup + duration
    issued = 0
    counted = 0
    errors: collections.Counter[str] = collections.Counter()
    lat: list[float] = []
    last_end = t_count

    async def worker() -> None:
        nonlocal issued, counted, last_end
        while time.monotonic() < deadline and issued < max_ops:
            i = issued
            issued += 1
            t0 = time.monotonic()
            try:
                await op(i)
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                ok = False
            t1 = time.monotonic()
            if t1 >= t_count and ok:
                counted += 1
                lat.append(t1 - t0)
                last_end = max(last_end, t1)

    await asyncio.gather(*(worker() for _ in range(conc)))
    window = max(1e-9, max(last_end, time.monotonic()) - t_count)
    lat.sort()
    return {
        "ops": counted, "issued": issued, "window_s": round(window, 3), "rate": counted / window,
        "cpu_s": time.process_time() - cpu_started,  # this process, every op issued (warm-up included)
        "errors": dict(errors.most_common(5)), "error_count": sum(errors.values()),
        "lat_p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
        "lat_p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None,
    }


async def mode_observe(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    url = spec["url"] + "/v1/observe"
    targets = spec["targets"]
    check_every = int(spec.get("check_every", 25))
    statuses: collections.Counter[str] = collections.Counter()
    sources: collections.Counter[str] = collections.Counter()
    conn = aiohttp.TCPConnector(limit=int(spec["concurrency"]))
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout", 30)))
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def op(i: int) -> None:
            body: dict[str, Any] = {"targets": [targets[i % len(targets)]], "nonce": secrets.token_urlsafe(18)}
            if spec.get("max_age") is not None:
                body["max_age"] = spec["max_age"]
            async with session.post(url, json=body) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
            if i % check_every == 0:
                doc = json.loads(raw)
                result = doc["results"][0]
                for env in result["envelopes"]:
                    p = decode_envelope_payload(env)
                    statuses[p["status"]] += 1
                    sources[answer_source(result)] += 1

        out = await run_ops(spec, op)
    out.update(statuses=dict(statuses), sources=dict(sources))
    return out


async def mode_handshake(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = client_ctx()
    targets = spec["targets"]

    async def op(i: int) -> None:
        t = targets[i % len(targets)]
        leaf = await raw_handshake(t["ip"], t["port"], t.get("sni"), ctx)
        if not leaf:
            raise RuntimeError("no certificate")

    return await run_ops(spec, op)


async def mode_burst(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    url = spec["url"] + "/v1/observe"
    targets, count = spec["targets"], int(spec["count"])
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout", 120)))
    codes: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def one(i: int) -> None:
            body: dict[str, Any] = {"targets": [targets[i % len(targets)]], "nonce": secrets.token_urlsafe(18)}
            if spec.get("max_age") is not None:
                body["max_age"] = spec["max_age"]
            try:
                async with session.post(url, json=body) as resp:
                    raw = await resp.read()
                    codes[str(resp.status)] += 1
                    if resp.status == 200:
                        for env in json.loads(raw)["results"][0]["envelopes"]:
                            statuses[decode_envelope_payload(env)["status"]] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                codes[type(exc).__name__] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.monotonic() - t0
    return {"count": count, "elapsed_s": round(elapsed, 3), "codes": dict(codes), "statuses": dict(statuses)}


MODES = {"observe": mode_observe, "handshake": mode_handshake, "burst": mode_burst}


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = eventloop.run(MODES[spec["mode"]](spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
