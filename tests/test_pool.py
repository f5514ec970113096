"""The client's keep-alive notary connections (client.pool.NotaryPool) against real loopback servers.

Each "notary" here is a real TCP (or TLS) server on 127.0.0.1 scripted to misbehave in one
way: closing idle keep-alive connections, racing a request with its close, redirecting,
sending too much, too little or garbage, stalling, or presenting a certificate the client
must refuse.  The last tests run ``verify_with_notaries`` over the pool with such a notary
in a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest
import trustme

import client._pool_conn as pool_conn  # owns DRAIN_SECONDS: patched there, where _Conn reads it
from client.api import verify_with_notaries
from client.bundle import Bundle
from client.cluster import local_cluster
from client.devtools import make_cert_context, tls_site
from client.http1 import HttpProtocolError
from client.pool import NotaryPool, shared_pool
from client.devtools import port_of, serving

Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A scripted loopback HTTP server: counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.open = 0
        self.max_open = 0
        self.port = 0

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request (head and Content-Length body); b"" at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return b""
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests += 1
        return head + body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def server(handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    s = Server(handler)
    async with serving(s._handle, ssl_ctx=ssl_ctx) as srv:
        s.port = port_of(srv)
        yield s


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%b\r\n%b"
            % (len(body), extra, body))


async def keep_alive(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A well-behaved keep-alive server: answers every request on the connection."""
    while await s.read_request(reader):
        writer.write(ok())
        await writer.drain()


@pytest.fixture
async def pool() -> AsyncIterator[NotaryPool]:
    p = NotaryPool()
    yield p
    await p.close()


async def test_connections_are_reused(pool: NotaryPool) -> None:
    async with server(keep_alive) as s:
        for _ in range(5):
            r = await pool.request("POST", s.url + "/v1/observe", body=b"{}", content_type="application/json")
            assert (r.status, r.content_type, r.body) == (200, "application/json", b'{"ok":true}')
    assert (s.connections, s.requests) == (1, 5)


async def test_server_closing_idle_connections_is_noticed(pool: NotaryPool) -> None:
    async def one_then_close(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await s.read_request(reader):  # answers (keep-alive framing), then closes the idle connection
            writer.write(ok())
            await writer.drain()
            await asyncio.sleep(0.02)

    async with server(one_then_close) as s:
        for _ in range(3):
            r = await pool.request("GET", s.url + "/v1/notary")
            assert r.status == 200
            await asyncio.sleep(0.1)  # the close arrives while the connection is idle
            assert pool.connections == 0
    assert (s.connections, s.requests) == (3, 3)


async def test_close_racing_a_request_on_a_reused_connection_is_retried_once(pool: NotaryPool) -> None:
    """The server reads the second request on a kept-alive connection and closes without a byte."""
    async def race(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await s.read_request(reader):
            writer.write(ok())
            await writer.drain()
        await s.read_request(reader)  # the next request arrives, and the connection closes

    async with server(race) as s:
        assert (await pool.request("POST", s.url + "/v1/observe", body=b"{}")).status == 200
        assert (await pool.request("POST", s.url + "/v1/observe", body=b"{}")).status == 200
    # request 2 hit the closing connection and was sent once more, on a new one
    assert (s.connections, s.requests) == (2, 3)


async def test_a_new_connection_closed_without_an_answer_is_not_retried(pool: NotaryPool) -> None:
    async def mute(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await s.read_request(reader)

    async with server(mute) as s:
        with pytest.raises(ConnectionError):
            await pool.request("POST", s.url + "/v1/observe", body=b"{}")
    assert (s.connections, s.requests) == (1, 1)


async def test_a_truncated_answer_on_a_reused_connection_is_not_retried(pool: NotaryPool) -> None:
    async def truncate_second(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await s.read_request(reader):
            writer.write(ok())
        if await s.read_request(reader):
            writer.write(ok()[:-3])  # part of the answer, then the close
            await writer.drain()

    async with server(truncate_second) as s:
        assert (await pool.request("GET", s.url + "/x")).status == 200
        with pytest.raises(ConnectionError, match="incomplete"):
            await pool.request("GET", s.url + "/x")
    assert (s.connections, s.requests) == (1, 2)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_returned_not_followed(pool: NotaryPool, status: int) -> None:
    async def canary_handler(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await s.read_request(reader)

    async with server(canary_handler) as canary:
        async def redirect(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await s.read_request(reader):
                writer.write(b"HTTP/1.1 %d Moved\r\nLocation: %b/v1/observe\r\nContent-Length: 0\r\n\r\n"
                             % (status, canary.url.encode()))

        async with server(redirect) as s:
            r = await pool.request("POST", s.url + "/v1/observe", body=b"{}")
        await asyncio.sleep(0.05)
    assert r.status == status and canary.connections == 0


@pytest.mark.parametrize("answer, why", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (5 << 20), "larger than"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"100000\r\n" + b"x" * (1 << 20) + b"\r\n" * 1, None),
    (b"this is not HTTP\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "incomplete"),
])
async def test_oversized_malformed_or_truncated_answers_fail(pool: NotaryPool, answer: bytes, why: str | None) -> None:
    async def send(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await s.read_request(reader):
            if why is None:  # a chunked body growing past the cap: 5 chunks of 1 MiB
                writer.write(answer)
                for _ in range(4):
                    writer.write(b"100000\r\n" + b"x" * (1 << 20) + b"\r\n")
            else:
                writer.write(answer)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async with server(send) as s:
        with pytest.raises((HttpProtocolError, ConnectionError), match=why or "larger than"):
            await pool.request("GET", s.url + "/v1/notary")
    assert pool.connections == 0


async def test_a_stalled_server_times_out_and_its_connection_is_closed(monkeypatch: pytest.MonkeyPatch,
                                                                      pool: NotaryPool) -> None:
    monkeypatch.setattr(pool_conn, "DRAIN_SECONDS", 0.3)
    closed = asyncio.Event()

    async def stall(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await s.read_request(reader)
        await reader.read()  # until the client gives up and closes
        closed.set()

    async with server(stall) as s:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.request("POST", s.url + "/v1/observe", body=b"{}")
        assert pool.connections == 1  # still waiting out the answer, bounded by DRAIN_SECONDS
        await asyncio.wait_for(closed.wait(), 2)
    assert pool.connections == 0


async def test_an_abandoned_answer_that_completes_returns_the_connection(pool: NotaryPool) -> None:
    async def slow(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await s.read_request(reader):
            await asyncio.sleep(0.15)
            writer.write(ok())

    async with server(slow) as s:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.request("GET", s.url + "/v1/notary")
        await asyncio.sleep(0.3)
        assert (await pool.request("GET", s.url + "/v1/notary")).status == 200
    assert (s.connections, s.requests) == (1, 2)


async def test_connections_are_bounded() -> None:
    async def slow(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await s.read_request(reader):
            await asyncio.sleep(0.05)
            writer.write(ok())

    p = NotaryPool(limit=2)
    try:
        async with server(slow) as s:
            got = await asyncio.gather(*[p.request("GET", s.url + "/v1/notary") for _ in range(6)])
    finally:
        await p.close()
    assert [r.status for r in got] == [200] * 6
    assert s.max_open <= 2 and s.requests == 6


async def test_at_the_limit_a_new_request_displaces_an_abandoned_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """An abandoned request's connection may wait out its answer (DRAIN_SECONDS), but not while
    a new request is waiting for room at the limit: the draining connection is closed for it
    (found by bench/client_throughput: early decisions left the pool at its limit)."""
    monkeypatch.setattr(pool_conn, "DRAIN_SECONDS", 5.0)
    release = asyncio.Event()

    async def stall_first(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await s.read_request(reader):
            if s.requests == 1:
                await release.wait()  # the abandoned request's answer is late
            writer.write(ok())
            await writer.drain()

    p = NotaryPool(limit=1)
    try:
        async with server(stall_first) as s:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await p.request("GET", s.url + "/v1/notary")
            assert p.connections == 1  # draining
            loop = asyncio.get_running_loop()
            start = loop.time()
            got = await asyncio.wait_for(p.request("GET", s.url + "/v1/notary"), 3)
            assert got.status == 200
            assert loop.time() - start < 2.0  # not held until the drain deadline (5 s)
            assert s.connections == 2 and p.connections == 1
            release.set()
    finally:
        await p.close()


async def test_unsolicited_bytes_on_an_idle_connection_drop_it(pool: NotaryPool) -> None:
    async def chatty(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await s.read_request(reader):
            writer.write(ok())
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(ok())  # an answer to nothing
            await s.read_request(reader)

    async with server(chatty) as s:
        assert (await pool.request("GET", s.url + "/x")).status == 200
        await asyncio.sleep(0.15)
        assert pool.connections == 0


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


def _server_ctx(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


async def test_https_with_a_trusted_certificate(tls_ca: trustme.CA) -> None:
    client_ctx = ssl.create_default_context()
    tls_ca.configure_trust(client_ctx)
    p = NotaryPool(ssl_context=client_ctx)
    try:
        async with server(keep_alive, _server_ctx(tls_ca, "localhost")) as s:
            for _ in range(2):
                assert (await p.request("GET", f"https://localhost:{s.port}/v1/notary")).status == 200
    finally:
        await p.close()
    assert (s.connections, s.requests) == (1, 2)


@pytest.mark.parametrize("case", ["untrusted", "wrong_name"])
async def test_https_with_a_bad_certificate_is_refused(tls_ca: trustme.CA, case: str) -> None:
    if case == "untrusted":  # the default context (system CAs) does not trust the test CA
        p = NotaryPool()
        server_ctx = _server_ctx(tls_ca, "localhost")
    else:
        client_ctx = ssl.create_default_context()
        tls_ca.configure_trust(client_ctx)
        p = NotaryPool(ssl_context=client_ctx)
        server_ctx = _server_ctx(tls_ca, "other.example")
    try:
        async with server(keep_alive, server_ctx) as s:
            with pytest.raises(ssl.SSLCertVerificationError):
                await p.request("GET", f"https://localhost:{s.port}/v1/notary")
    finally:
        await p.close()
    assert s.requests == 0


def test_shared_pool_is_closed_when_the_loop_shuts_down() -> None:
    seen: dict[str, object] = {}

    async def main(s: Server) -> None:
        p = shared_pool()
        assert shared_pool() is p
        assert (await p.request("GET", s.url + "/v1/notary")).status == 200
        seen["pool"] = p

    async def outer() -> None:
        async with server(keep_alive) as s:
            await asyncio.to_thread(asyncio.run, main(s))  # its own loop, ended by asyncio.run
            await asyncio.sleep(0.1)
            seen["open"] = s.open

    asyncio.run(outer())
    p = seen["pool"]
    assert isinstance(p, NotaryPool) and p.closed and p.connections == 0 and seen["open"] == 0


# -- verify_with_notaries over the pool, with one misbehaving notary in a real cluster ------------

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def site_ctx() -> ssl.SSLContext:
    return make_cert_context(HOST, org="Parallax pool test site")


def _with_url(bundle: Bundle, i: int, url: str) -> Bundle:
    entries = list(bundle.notaries)
    entries[i] = replace(entries[i], url=url)
    return Bundle(tuple(entries))


async def _check_with_bad_notary(tmp_path: Path, site_ctx: ssl.SSLContext, handler: Handler,
                                 timeout: float = 5) -> tuple[str, str, list[str]]:
    async with tls_site(site_ctx) as site, local_cluster(4, tmp_path) as cluster, server(handler) as bad:
        v = await verify_with_notaries(HOST, site.port, bundle=_with_url(cluster.bundle, 0, bad.url),
                                       wait_all=True, timeout=timeout)
    return v.results[0].result, v.results[0].reason or "", [r.result for r in v.results[1:]]


async def test_check_with_a_stalled_notary(tmp_path: Path, site_ctx: ssl.SSLContext) -> None:
    async def stall(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    result, reason, others = await _check_with_bad_notary(tmp_path, site_ctx, stall, timeout=1)
    assert result == "unreachable" and "no answer within 1s" in reason and others == ["agrees"] * 3


async def test_check_with_a_garbage_notary(tmp_path: Path, site_ctx: ssl.SSLContext) -> None:
    async def garbage(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await s.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Encoding: br\r\n\r\nabc")

    result, reason, others = await _check_with_bad_notary(tmp_path, site_ctx, garbage)
    assert result == "unreachable" and "compressed" in reason and others == ["agrees"] * 3


async def test_check_with_a_notary_whose_idle_connections_close(tmp_path: Path, site_ctx: ssl.SSLContext) -> None:
    """Every notary connection closes right after each answer: checks keep working (new connections)."""
    async with tls_site(site_ctx) as site, local_cluster(3, tmp_path) as cluster:
        real = cluster.bundle.notaries[0].url

        async def proxy_once(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            req = await s.read_request(reader)
            up_r, up_w = await asyncio.open_connection("127.0.0.1", int(real.rsplit(":", 1)[1]))
            up_w.write(req)
            head = await up_r.readuntil(b"\r\n\r\n")
            length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:"))
                         .split(b":")[1])
            writer.write(head + await up_r.readexactly(length))  # keep-alive framing, then close
            await writer.drain()
            up_w.close()

        async with server(proxy_once) as s:
            bundle = _with_url(cluster.bundle, 0, s.url)
            for _ in range(3):
                v = await verify_with_notaries(HOST, site.port, bundle=bundle, wait_all=True, timeout=5)
                assert v.status == "consistent" and v.results[0].result == "agrees", v.results[0].reason
                await asyncio.sleep(0.05)
    assert s.connections >= 3


async def test_a_callers_aiohttp_session_keeps_the_same_guarantees() -> None:
    """SessionTransport (verify_with_notaries(session=aiohttp session)): no redirect followed, size cap."""
    import aiohttp

    from client.transport import MAX_RESPONSE_BYTES, SessionTransport

    async def big_or_redirect(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while req := await s.read_request(reader):
            if b"/big" in req.split(b"\r\n", 1)[0]:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_RESPONSE_BYTES + 1))
                writer.write(b"x" * (MAX_RESPONSE_BYTES + 1))
            else:
                writer.write(b"HTTP/1.1 307 Moved\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async with server(big_or_redirect) as s, aiohttp.ClientSession() as session:
        t = SessionTransport(session)
        r = await t.request("POST", s.url + "/v1/observe", body=b"{}", content_type="application/json")
        assert r.status == 307 and s.requests == 1  # not followed to /elsewhere
        with pytest.raises(HttpProtocolError, match="larger than"):
            await t.request("GET", s.url + "/big")


async def test_check_over_a_pool_the_caller_owns(tmp_path: Path, site_ctx: ssl.SSLContext) -> None:
    p = NotaryPool(limit=8)
    try:
        async with tls_site(site_ctx) as site, local_cluster(3, tmp_path) as cluster:
            for _ in range(2):
                v = await verify_with_notaries(HOST, site.port, bundle=cluster.bundle, wait_all=True, timeout=5, session=p)
                assert v.status == "consistent" and v.agreeing == 3
            assert 3 <= p.connections <= 8
    finally:
        await p.close()
    assert p.connections == 0


async def test_a_closed_pool_refuses_requests_and_ends_those_in_flight() -> None:
    async def stall(s: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await s.read_request(reader)
        await reader.read()

    p = NotaryPool()
    async with server(stall) as s:
        inflight = asyncio.create_task(p.request("GET", s.url + "/v1/notary"))
        await asyncio.sleep(0.1)
        await p.close()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(inflight, 2)
        with pytest.raises(ConnectionError, match="closed"):
            await p.request("GET", s.url + "/v1/notary")
    assert p.connections == 0 and s.connections == 1
