"""The benchmarks' raw-handshake baseline completes the handshake at the server, on both loops.

Every "one direct TLS handshake" baseline in ``bench/`` is ``bench._common.raw_handshake``.
On uvloop an abort straight after the client's handshake dropped the client's last flight
(its Finished): the server never completed its side, so the baseline did less work than a
real handshake (and than the prober, which always sends it).  A real TLS site on loopback
counts the connections whose handshake it completed.
"""

from __future__ import annotations

import asyncio

import pytest

from bench._common import client_ctx, raw_handshake
from client.devtools import make_cert_context, tls_site
from notary import eventloop

HANDSHAKES = 20


async def _served_after_raw_handshakes() -> tuple[int, int]:
    async with tls_site(make_cert_context("bench.test")) as site:
        ctx = client_ctx()
        leaves = [await raw_handshake("127.0.0.1", site.port, "bench.test", ctx) for _ in range(HANDSHAKES)]
        for _ in range(200):  # the site's handler runs once its side of a handshake is complete
            if site.connections >= HANDSHAKES:
                break
            await asyncio.sleep(0.01)
        return sum(1 for leaf in leaves if leaf), site.connections


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_raw_handshake_is_complete_at_the_server(loop: str) -> None:
    with_leaf, served = eventloop.run(_served_after_raw_handshakes(), loop=loop)
    assert with_leaf == HANDSHAKES
    assert served == HANDSHAKES
