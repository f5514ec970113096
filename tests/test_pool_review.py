"""Regression tests for the attacker's review of the lean notary transport (client.http1, client.pool).

Each test names its finding; each failed before its fix.  Real loopback servers scripted
per test (``tests.test_pool.server``), real sockets.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import client._pool_conn as pool_conn  # owns DRAIN_SECONDS: patched there, where _Conn reads it
import client.pool as pool_mod
from client.bundle import BundleEntry
from client.fanout import ask_notary
from client.http1 import MAX_CHUNKS, HttpProtocolError, ResponseParser
from client.pool import NotaryPool
from notary.core import Target
from tests.test_pool import Server, keep_alive, ok, server


def _entry(url: str) -> BundleEntry:
    return BundleEntry(name="hostile", url=url, region="r", key_id="ed25519:00", public_key="AA==")


# -- 1 (HIGH): a failed observe left its identity request running for ever ---------------------------

async def test_a_failed_observe_does_not_leave_its_identity_request_holding_a_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The notary refuses the observe at once and never answers GET /v1/notary.  Before the fix
    the GET kept running (no deadline, not cancelled) and each check leaked one pool slot: with
    ``limit=2`` the honest notary could no longer be asked after two checks."""
    monkeypatch.setattr(pool_conn, "DRAIN_SECONDS", 0.2)

    async def refuse_then_stall(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request := await s.read_request(reader):
            if request.startswith(b"POST"):
                writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
            else:
                await reader.read()  # the identity request: never answered

    p = NotaryPool(limit=2)
    try:
        async with server(refuse_then_stall) as bad, server(keep_alive) as good:
            for _ in range(6):
                answer = await ask_notary(p, _entry(bad.url), Target.parse("example.com"), "n" * 22, timeout=5)
                assert answer.error and "503" in answer.error
                got = await asyncio.wait_for(p.request("GET", good.url + "/v1/notary"), 3)
                assert got.status == 200
            await asyncio.sleep(0.4)  # the cancelled GETs' connections finish draining
            assert p.connections <= 1  # at most the good notary's idle connection
    finally:
        await p.close()


async def test_the_pool_bounds_every_request_even_without_a_caller_timeout() -> None:
    async def stall(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await s.read_request(reader)
        await reader.read()

    p = NotaryPool(deadline=0.3)
    try:
        async with server(stall) as s:
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(p.request("GET", s.url + "/v1/notary"), 5)
            assert time.monotonic() - start < 2
    finally:
        await p.close()


async def test_the_deadline_bounds_requests_on_kept_alive_connections_too() -> None:
    """A request on a reused connection has no timer of its own: the pool's one watchdog fails it
    at its deadline (TimeoutError, connection closed, never reused), and, armed again for the
    earliest request left, fails a later one at *its* deadline, not at the first one's."""
    async def answer_twice_then_stall(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await s.read_request(reader)
            writer.write(ok())
            await writer.drain()
        await reader.read()  # the third request on this connection: never answered

    p = NotaryPool(deadline=0.4)
    try:
        async with server(answer_twice_then_stall) as a, server(answer_twice_then_stall) as b:
            for s in (a, b):
                for _ in range(2):
                    assert (await p.request("GET", s.url + "/v1/notary")).status == 200
            assert (a.connections, b.connections) == (1, 1)  # both kept alive and reused
            loop = asyncio.get_running_loop()
            first = asyncio.ensure_future(p.request("GET", a.url + "/v1/notary"))
            await asyncio.sleep(0.25)
            second_started = loop.time()
            second = asyncio.ensure_future(p.request("GET", b.url + "/v1/notary"))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(first, 3)
            assert not second.done()  # the watchdog fired for the first request only
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(second, 3)
            assert loop.time() - second_started >= 0.4 - 0.02  # its own deadline, not the first request's
            assert loop.time() - second_started < 2
            await asyncio.sleep(0.05)
            assert p.connections == 0  # both timed-out connections closed, not returned to the pool
    finally:
        await p.close()


# -- 2 (MEDIUM): tiny chunks, endless trailers or interim responses cost quadratic CPU ----------------

def test_parsing_cost_is_linear_however_the_answer_is_cut() -> None:
    """256 KiB of 1-byte chunks took 750 ms (16 KiB: 91 ms): each chunk copied the rest of the
    buffer.  Now the same 256 KiB feed is refused after MAX_CHUNKS chunks, and parsing is linear:
    doubling the input about doubles the time (a generous factor of 4 allows for noise)."""
    def feed_chunks(n: int) -> float:
        parser = ResponseParser(max_body=1 << 30)
        data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nA\r\n" * n
        start = time.perf_counter()
        try:
            parser.feed(data)
        except HttpProtocolError as exc:
            assert "chunks" in str(exc) and n > MAX_CHUNKS
        return time.perf_counter() - start

    with pytest.raises(HttpProtocolError, match="chunks"):
        ResponseParser(max_body=1 << 30).feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nA\r\n" * (MAX_CHUNKS + 1))
    small, big = min(feed_chunks(2000) for _ in range(3)), min(feed_chunks(4000) for _ in range(3))
    assert big < 4 * small + 0.005, (small, big)  # quadratic would be ~4x; linear ~2x

    # The chunk-count bound does not refuse an honest chunked answer.
    parser = ResponseParser(max_body=1 << 20)
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n" * 1
                + b"0\r\n\r\n")
    assert parser.done and parser.response is not None and len(parser.response.body) == 1024


@pytest.mark.parametrize(("flood", "why"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n0\r\n" + b"X-T: 1\r\n" * 5000, "trailer"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * 20, "interim"),
])
def test_trailer_and_interim_floods_are_refused(flood: bytes, why: str) -> None:
    parser = ResponseParser(max_body=1 << 20)
    with pytest.raises(HttpProtocolError, match=why):
        parser.feed(flood)


def test_a_trickled_head_is_searched_once() -> None:
    parser = ResponseParser(max_body=1 << 20)
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 12000 + b"\r\nContent-Length: 2\r\n\r\nok"
    start = time.perf_counter()
    for i in range(len(head)):
        parser.feed(head[i:i + 1])
    assert parser.done and parser.response is not None and parser.response.body == b"ok"
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 99\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nok",
])
def test_bare_cr_lf_or_nul_in_a_head_is_refused(head: bytes) -> None:
    with pytest.raises(HttpProtocolError, match="bare CR, LF or NUL"):
        ResponseParser(max_body=1024).feed(head)


# -- 3 (LOW): a cancellation armed the drain timer on the next request's connection -------------------

async def test_cancelling_a_request_whose_answer_arrived_does_not_touch_the_next_request() -> None:
    async def by_delay(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request := await s.read_request(reader):
            await asyncio.sleep(0.3 if b"/a " in request else 2.5)
            writer.write(ok())
            await writer.drain()

    p = NotaryPool(limit=1)
    try:
        async with server(by_delay) as s:
            a = asyncio.create_task(p.request("GET", s.url + "/a"))
            await asyncio.sleep(0.05)
            waiter = next(iter(p._all)).waiter
            assert waiter is not None
            b = asyncio.create_task(p.request("GET", s.url + "/b"))  # waits for the only connection
            while not waiter.done():
                await asyncio.sleep(0)
            a.cancel()  # A's answer is in, and the connection handed to B, before A resumes
            with pytest.raises(asyncio.CancelledError):
                await a
            got = await asyncio.wait_for(b, 5)  # B's answer takes 2.5 s: more than DRAIN_SECONDS
            assert got.status == 200 and s.requests == 2
    finally:
        await p.close()


# -- 4 (LOW): the stale-connection retry could take another stale connection ---------------------------

async def test_the_retry_after_a_stale_connection_uses_a_new_one() -> None:
    """A server that answers the first request of each connection and closes the connection,
    without a byte, when a second one arrives on it (its idle timer firing as the request came).
    With three idle connections, a request that meets a stale one is resent once, on a newly
    opened connection: before the fix it took the next idle one, stale too, and failed."""
    async def one_answer_per_connection(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await s.read_request(reader):
            await asyncio.sleep(0.1)  # so that the first three requests need three connections
            writer.write(ok())
            await writer.drain()
        await s.read_request(reader)  # a second request: closed unanswered

    p = NotaryPool()
    try:
        async with server(one_answer_per_connection) as s:
            got = await asyncio.gather(*[p.request("GET", s.url + "/v1/notary") for _ in range(3)])
            assert [r.status for r in got] == [200] * 3 and s.connections == 3
            assert (await asyncio.wait_for(p.request("GET", s.url + "/v1/notary"), 3)).status == 200
            assert s.connections == 4  # one stale connection tried, then a new one
    finally:
        await p.close()


# -- 5 (LOW): non-ASCII notary URLs, accepted by the bundle, could not be asked ----------------------

def test_non_ascii_urls_are_encoded_like_any_http_client_does() -> None:
    key, authority, target = pool_mod._origin("http://bücher.example:8443/notär?x=ä")
    assert key == ("http", "xn--bcher-kva.example", 8443)
    assert authority == "xn--bcher-kva.example:8443"
    assert target == "/not%C3%A4r?x=%C3%A4"
    assert pool_mod._origin("https://[::1]/v1")[:2] == (("https", "::1", 443), "[::1]")
    assert pool_mod._origin("HTTPS://Example.COM:443")[1:] == ("example.com", "/")
    with pytest.raises(ValueError):
        pool_mod._origin("ftp://example.com/")


async def test_a_non_ascii_path_reaches_the_server() -> None:
    seen: list[bytes] = []

    async def record(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request := await s.read_request(reader):
            seen.append(request.split(b"\r\n", 1)[0])
            writer.write(ok())
            await writer.drain()

    p = NotaryPool()
    try:
        async with server(record) as s:
            assert (await p.request("GET", s.url + "/notär/v1/notary")).status == 200
    finally:
        await p.close()
    assert seen == [b"GET /not%C3%A4r/v1/notary HTTP/1.1"]


# -- 6 (LOW): a pool kept across two asyncio.run calls timed out silently ------------------------------

def test_a_pool_used_from_a_second_event_loop_starts_afresh() -> None:
    """A pool the caller keeps across two ``asyncio.run`` calls (``verify_with_notaries_sync(session=pool)``
    twice): its idle connection belongs to the first, closed loop.  Before the fix the second run
    reused it and timed out; now the pool forgets it and connects afresh.  The server runs in a
    thread of its own, so it outlives both loops, as a real notary does."""
    import threading

    url: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        async def main() -> None:
            async with server(keep_alive) as s:
                url.append(s.url)
                while not stop.is_set():
                    await asyncio.sleep(0.02)
        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not url and time.monotonic() < deadline:
        time.sleep(0.01)
    assert url
    p = NotaryPool()

    async def ask() -> int:
        return (await asyncio.wait_for(p.request("GET", url[0] + "/v1/notary"), 3)).status

    try:
        assert asyncio.run(ask()) == 200   # leaves an idle connection bound to this loop
        assert asyncio.run(ask()) == 200   # before the fix: TimeoutError on the dead connection
        asyncio.run(p.close())
    finally:
        stop.set()
        thread.join(5)


async def test_a_connection_lost_before_its_request_is_written_fails_at_once() -> None:
    """Review of uvloop: a connection lost between being opened (or taken) and the request's write
    (a notary refusing at its connection cap answers and closes at once) was written to anyway:
    asyncio dropped the bytes and the request waited for the pool's deadline (here 30 s); uvloop
    raised RuntimeError.  It now fails at once with ConnectionClosed, and leaves no slot taken."""
    p = NotaryPool(deadline=30)
    try:
        async with server(keep_alive) as s:
            conn = await p._open(("http", "127.0.0.1", s.port))  # noqa: SLF001 - the seam between open and send
            assert conn.transport is not None
            conn.transport.abort()  # lost, as if the server had closed it first
            await asyncio.sleep(0.05)  # its connection_lost runs
            start = time.monotonic()
            with pytest.raises(pool_mod.ConnectionClosed) as info:
                await asyncio.wait_for(conn.send(b"GET /v1/notary HTTP/1.1\r\nHost: x\r\n\r\n", 1 << 20,
                                                 asyncio.get_running_loop().time() + 30), 10)
            assert info.value.empty
            assert time.monotonic() - start < 1
            assert p.connections == 0
            await asyncio.sleep(0.1)  # the server's side sees the close before the server stops
    finally:
        await p.close()
