"""A client that keeps asking while rate limited stays limited (found by bench/abuse.py: refused
requests were free, so an abuser at full speed kept its bucket full enough to cost the notary
thousands of answers a second).  A refused request is charged, and its 429 held a moment."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from notary.config import NotaryConfig
from notary.core import SigningKey
from notary.server import create_app


async def test_asking_again_while_limited_keeps_a_client_limited(tmp_path: Path) -> None:
    app = create_app(NotaryConfig(data_dir=tmp_path, rate_per_client=1.0, burst_per_client=2), SigningKey.generate())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/notary"
    try:
        async with aiohttp.ClientSession() as s:
            async def get() -> tuple[int, int]:
                async with s.get(url) as r:
                    return r.status, int(r.headers.get("Retry-After", "0"))
            assert [(await get())[0] for _ in range(2)] == [200, 200]
            statuses = []
            for _ in range(3):
                status, retry = await get()
                statuses.append(status)
                await asyncio.sleep(0.6)  # slower than the burst, but never waiting out Retry-After
            # Before the fix the third try found 1.2 fresh tokens and was served.
            assert statuses == [429, 429, 429]
            await asyncio.sleep(retry + 0.1)  # a client that waits as told is served again
            assert (await get())[0] == 200
    finally:
        await runner.cleanup()


async def test_metrics_and_openapi_are_rate_limited_and_healthz_is_free(tmp_path: Path) -> None:
    """Review 2, finding 3: one address got 29k answers from /v1/openapi.json and /metrics in 8 s."""
    app = create_app(NotaryConfig(data_dir=tmp_path, rate_per_client=0.01, burst_per_client=3, rate_limit_delay=0.0),
                     SigningKey.generate())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as s:
            async def status(path: str) -> int:
                async with s.get(base + path) as r:
                    if r.status == 200 and path == "/v1/openapi.json":
                        assert (await r.json())["openapi"].startswith("3.")
                    return r.status
            got = [await status(p) for p in ("/v1/openapi.json", "/metrics", "/v1/openapi.json", "/metrics")]
            assert got == [200, 200, 200, 429]  # one bucket for both: three tokens, then limited
            assert await status("/v1/openapi.json") == 429
            assert [await status("/healthz") for _ in range(5)] == [200] * 5  # liveness stays free
            assert await status("/v1/notary") == 200  # a bucket of their own: the observation budget is intact
    finally:
        await runner.cleanup()


async def test_a_key_flood_shows_in_metrics(tmp_path: Path) -> None:
    """Requests charged to the shared overflow bucket (the table full of draining buckets) are
    counted in ``parallax_rate_limit_overflowed``, so an operator can see a key flood."""
    from notary.ratelimit import RateLimiter
    from notary.server import LIMITER

    app = create_app(NotaryConfig(data_dir=tmp_path, rate_per_client=0.001, burst_per_client=1, rate_limit_delay=0.0),
                     SigningKey.generate())
    app[LIMITER] = RateLimiter(0.001, 1, max_clients=2)  # a small table, so three addresses flood it
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        for source, expected in (("127.0.0.2", 200), ("127.0.0.3", 200), ("127.0.0.4", 200), ("127.0.0.5", 429)):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0))) as s:
                async with s.get(base + "/v1/notary") as r:
                    assert r.status == expected, source  # .4 took the overflow bucket's token, .5 found it empty
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/metrics") as r:
                text = await r.text()
        [value] = [float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("parallax_rate_limit_overflowed ")]
        assert value >= 2  # .4 and .5 (a refused request is checked again after its charge)
    finally:
        await runner.cleanup()
