"""The prober's handshake (``notary.tlsprobe``) gives the same data on both event loops.

Real servers on loopback: a TLS site that counts the handshakes it completed, and
plain TCP servers that misbehave.  Each test runs on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from typing import AsyncIterator, Awaitable, Callable

import pytest

from client.devtools import make_cert_context, port_of, serving, tls_site
from notary import eventloop
from notary.core import AddressPolicy, ProbeResult, Target, parse_networks
from notary.prober import ProbeLimits, Prober

LOOPS = ["asyncio", "uvloop"]
POLICY = AddressPolicy(allow_networks=parse_networks(["127.0.0.0/8"]), allowed_ports=None)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _prober(**limits: float) -> Prober:
    return Prober(POLICY, clock=lambda: int(time.time()), limits=ProbeLimits(**limits))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _plain(handler: Handler) -> AsyncIterator[int]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    async with serving(guarded, "127.0.0.1", 0) as server:
        yield port_of(server)


async def _probe_site(n: int) -> tuple[list[ProbeResult], int]:
    async with tls_site(make_cert_context("probe.test")) as site:
        prober = _prober()
        results = [(await prober.probe(Target.parse("127.0.0.1", site.port, "probe.test")))[0] for _ in range(n)]
        for _ in range(200):  # the site's handler runs once its side of a handshake is complete
            if site.connections >= n:
                break
            await asyncio.sleep(0.01)
        return results, site.connections


@pytest.mark.parametrize("loop", LOOPS)
def test_every_probe_completes_the_handshake_at_the_server(loop: str) -> None:
    """The client's last flight (its Finished) leaves before the prober aborts the connection."""
    results, served = eventloop.run(_probe_site(10), loop=loop)
    assert [r.status for r in results] == ["ok"] * 10
    assert all(r.chain and r.spki_sha256 and r.tls_version == "TLSv1.3" for r in results)
    assert served == 10


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(64 * 1024)
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    await writer.drain()
    await reader.read(1)


async def _close_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(64 * 1024)
    writer.close()


async def _half_a_record_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(64 * 1024)
    writer.write(b"\x16\x03\x03\x40\x00" + b"\x02" * 100)  # a 16 KiB record announced, 100 bytes sent
    await writer.drain()
    writer.close()


async def _endless_record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(64 * 1024)
    writer.write(b"\x16\x03\x03\x40\x00")
    for _ in range(64):  # bounded: 64 KiB, past the 8 KiB cap below
        writer.write(b"\x0b" * 1024)
        await writer.drain()
    await reader.read(1)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(64 * 1024):  # until the prober hangs up
        pass


async def _hostile(handler: Handler) -> tuple[ProbeResult, float]:
    async with _plain(handler) as port:
        prober = _prober(connect_timeout=2.0, handshake_timeout=0.5, max_handshake_bytes=8 * 1024)
        t0 = time.monotonic()
        result = (await prober.probe(Target.parse("127.0.0.1", port, "probe.test")))[0]
        return result, time.monotonic() - t0


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(("handler", "status", "detail"), [
    (_garbage, "not_tls", "did not answer with a TLS record"),
    (_close_after_hello, "reset", "closed during handshake"),
    (_half_a_record_then_close, "tls_failed", "closed during handshake"),
    (_endless_record, "chain_too_large", "exceeded 8192 bytes"),
    (_silent, "timeout", "TLS handshake timed out after 0.5s"),
], ids=lambda v: getattr(v, "__name__", None) or str(v)[:12])
def test_a_misbehaving_server_is_the_same_data_on_both_loops(handler: Handler, status: str, detail: str,
                                                             loop: str) -> None:
    result, elapsed = eventloop.run(_hostile(handler), loop=loop)
    assert (result.status, result.ip) == (status, "127.0.0.1"), result.detail
    assert detail in (result.detail or "")
    assert elapsed < 3.0


async def _refused() -> ProbeResult:
    async with _plain(_silent) as port:
        pass  # closed: nothing listens on the port any more
    return (await _prober().probe(Target.parse("127.0.0.1", port, "probe.test")))[0]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_refused_connection_is_refused_on_both_loops(loop: str) -> None:
    result = eventloop.run(_refused(), loop=loop)
    assert (result.status, result.detail) == ("refused", "connection refused")


async def _many_at_once(n: int) -> tuple[list[str], list[str]]:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context.get("message"))))
    prober = _prober(handshake_timeout=0.3, max_handshake_bytes=8 * 1024)
    async with tls_site(make_cert_context("probe.test")) as site, _plain(_silent) as silent, \
            _plain(_endless_record) as endless:
        rounds = await asyncio.gather(*(prober.probe(Target.parse("127.0.0.1", port, "probe.test"))
                                        for port in [site.port, silent, endless] * n))
    await asyncio.sleep(0.1)
    gc.collect()  # a future whose exception nobody retrieved is reported when it is collected
    await asyncio.sleep(0.1)
    return [r[0].status for r in rounds], reported


@pytest.mark.parametrize("loop", LOOPS)
def test_concurrent_probes_leave_no_exception_unretrieved(loop: str) -> None:
    statuses, reported = eventloop.run(_many_at_once(15), loop=loop)
    assert statuses == ["ok", "timeout", "chain_too_large"] * 15
    assert reported == []


async def _two_ways() -> tuple[ProbeResult, ProbeResult, str | None, str]:
    from client.api import client_probe

    async with tls_site(make_cert_context("probe.test")) as site:
        target = Target.parse("127.0.0.1", site.port, "probe.test")
        first = (await _prober().probe(target))[0]
        again = (await _prober().probe(target))[0]
        view = await client_probe(target)
    return first, again, view.spki_sha256, view.status


@pytest.mark.parametrize("loop", LOOPS)
def test_the_notarys_prober_and_the_clients_probe_see_the_same_chain(loop: str) -> None:
    first, again, client_spki, client_status = eventloop.run(_two_ways(), loop=loop)
    assert first.status == again.status == client_status == "ok"
    assert first.chain == again.chain and len(first.chain) == 1  # the demo site presents its leaf alone
    assert first.spki_sha256 == again.spki_sha256 == client_spki
