"""A local cluster's notaries are served as ``parallax serve`` serves one (notary.serving.start_serving).

Development, demos, tests and benchmarks use :func:`client.cluster.local_cluster`; before, it
served through a bare aiohttp site, so none of them ran the connection guard, the JSON answers
to unparsable HTTP or the direct routes that ``parallax serve`` runs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from client.cluster import local_cluster
from notary.appkeys import GUARD
from notary.connguard import ConnLimits


async def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(raw)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        body = await asyncio.wait_for(r.readexactly(int(headers.get("content-length", "0"))), 10)
        return int(lines[0].split()[1]), headers, body
    finally:
        w.close()


async def test_a_local_cluster_notary_is_served_behind_the_guard(tmp_path: Path) -> None:
    async with local_cluster(1, tmp_path, conn_limits=ConnLimits(max_per_client=2)) as cluster:
        port = int(cluster.urls[0].rsplit(":", 1)[1])
        # Unparsable HTTP (two lengths) is answered in JSON, as behind the guard; a bare site answers text/plain.
        status, headers, body = await _exchange(
            port, b"POST /v1/observe HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}")
        assert status == 400 and headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"] == "bad_http"
        # The guard's caps are the cluster's conn_limits: two connections held, a third is refused.
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        try:
            await asyncio.sleep(0.1)
            status, _, body = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 429 and json.loads(body)["error"] == "too_many_connections"
            assert cluster.apps[0][GUARD].refused == {"client": 1, "global": 0}
        finally:
            for _, w in held:
                w.close()
        # Served normally again once they are gone.
        await asyncio.sleep(0.1)
        status, _, _ = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
