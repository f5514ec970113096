"""``serve --relay-peer CIDR``: an Oblivious HTTP relay the operator knows gets a larger allowance.

A gateway sees every request a relay forwards as coming from the relay, so without this all
of a relay's clients share one client's bucket.  A relay peer gets ``relay_peer_factor`` times
the rate and burst (its own bucket table, charged for direct, gateway and after-the-fact
costs alike) and no per-client connection cap; everyone else is limited as before.  Real
notary servers on loopback, requests from distinct 127.0.0.x source addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from pathlib import Path
from typing import AsyncIterator

import aiohttp

from notary.config import NotaryConfig
from notary.connguard import ConnLimits
from notary.core import bhttp, ohttp
from tests.test_connguard import guarded

PEER = "127.0.0.2"      # the relay
OTHER = "127.0.0.3"     # anybody else


def config(tmp_path: Path, **kw: object) -> NotaryConfig:
    base: dict[str, object] = dict(data_dir=tmp_path, rate_per_client=0.001, burst_per_client=2, rate_limit_delay=0.0,
                                   relay_peers=(ipaddress.ip_network(f"{PEER}/32"),), relay_peer_factor=4)
    base.update(kw)
    return NotaryConfig(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def notary(cfg: NotaryConfig) -> AsyncIterator[str]:
    async with guarded(cfg) as (port, _guard):
        yield f"http://127.0.0.1:{port}"


def session_from(source: str, limit: int = 100) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0), limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=10))


async def statuses(s: aiohttp.ClientSession, url: str, n: int) -> list[int]:
    out = []
    for _ in range(n):
        async with s.get(url + "/v1/notary") as r:
            out.append(r.status)
    return out


async def test_a_relay_peer_gets_factor_times_the_burst_and_others_do_not(tmp_path: Path) -> None:
    async with notary(config(tmp_path)) as url:
        async with session_from(PEER) as peer, session_from(OTHER) as other:
            assert await statuses(peer, url, 9) == [200] * 8 + [429]    # burst 2 x factor 4
            assert await statuses(other, url, 3) == [200, 200, 429]     # the ordinary bucket
    (tmp_path / "off").mkdir()
    async with notary(config(tmp_path / "off", relay_peers=())) as url:
        async with session_from(PEER) as peer:
            assert await statuses(peer, url, 3) == [200, 200, 429]      # not configured: nothing special


async def test_gateway_requests_from_a_relay_peer_use_its_allowance(tmp_path: Path) -> None:
    """Encapsulated requests as a relay forwards them: the outer deposit and the inner request
    are both charged to the peer's larger bucket (and the deposit refunded from it)."""
    async with notary(config(tmp_path)) as url:
        async with session_from(PEER) as peer, session_from(OTHER) as other:
            async with other.get(url + "/.well-known/ohttp-gateway") as r:
                cfg = ohttp.decode_keys(await r.read())[0]

            async def ask(s: aiohttp.ClientSession) -> int:
                """The inner status (the outer one when the deposit is refused)."""
                enc, ctx = ohttp.encapsulate_request(cfg, bhttp.encode_request(
                    bhttp.Request("GET", "https", "", "/v1/notary")))
                async with s.post(url + "/.well-known/ohttp-gateway", data=enc,
                                  headers={"Content-Type": ohttp.REQUEST_MEDIA_TYPE}) as r:
                    if r.status != 200:
                        return r.status
                    return bhttp.decode_response(ohttp.decapsulate_response(ctx, await r.read())).status

            assert [await ask(peer) for _ in range(9)] == [200] * 8 + [429]
            assert [await ask(other) for _ in range(3)] == [200, 200, 429]


async def test_a_relay_peer_is_exempt_from_the_per_client_connection_cap(tmp_path: Path) -> None:
    cfg = config(tmp_path, conn_limits=ConnLimits(max_per_client=2), rate_per_client=1000.0, burst_per_client=1000)

    async def open_many(source: str, url: str, n: int) -> list[int]:
        port = int(url.rsplit(":", 1)[1])
        conns = [await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)) for _ in range(n)]
        try:
            out = []
            for reader, writer in conns:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 5)
                out.append(int(line.split()[1]) if line else 0)
            return out
        finally:
            for _, writer in conns:
                writer.close()

    async with notary(cfg) as url:
        assert await open_many(PEER, url, 5) == [200] * 5
        other = await open_many(OTHER, url, 4)
        assert other[:2] == [200, 200] and all(code in (0, 429) for code in other[2:]), other
