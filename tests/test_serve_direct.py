"""POST /v1/observe served directly from the protocol under ``serve_app`` (notary.serving.DIRECT_ROUTES).

The production server (``serve_app``: ``parallax serve`` and its workers) hands
``POST /v1/observe`` to its handler without aiohttp's router and middleware chain.
These tests run a real notary through ``serve_app`` (connection guard included)
over real sockets against a real loopback TLS target, and check that the direct
route keeps every guarantee of the routed one: verified answers, error JSON,
body size limit and deadline, Content-Encoding errors, rate limiting with
``Retry-After``, ``Expect: 100-continue``, and the /metrics request counts.
``direct_dispatch`` itself is checked on requests built by aiohttp's own test
helper (``make_mocked_request``: the seam is the request object, nothing else).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
import zlib
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from notary.config import NotaryConfig
from notary.core import AddressPolicy, SigningKey, open_answer, parse_networks
from notary.server import GUARD, LIMITER, create_app
from notary.serving import DIRECT_ROUTES, DIRECT_STANDS_FOR, direct_dispatch, serve_app
from tests.support.tls import make_ca, server_context, tls_server

LOOPBACK = AddressPolicy(parse_networks(["127.0.0.0/8"]), None)


def nonce(i: int) -> str:
    return f"direct-nonce-{i}".ljust(24, "x")


@pytest.fixture(scope="module")
def cert():
    return make_ca().issue_cert("localhost", "127.0.0.1")


class Served:
    def __init__(self, app: web.Application, key: SigningKey, port: int, target_port: int) -> None:
        self.app, self.key, self.port, self.target_port = app, key, port, target_port
        self.routed: list[str] = []  # paths that went through the app's middleware chain

    def body(self, i: int, **extra: Any) -> bytes:
        return json.dumps({"targets": [{"host": "127.0.0.1", "port": self.target_port}], "nonce": nonce(i),
                           **extra}).encode()

    async def raw(self, data: bytes, *, then: bytes = b"", pause: float = 0.0,
                  timeout: float = 10.0) -> tuple[int, dict[str, str], bytes, list[int]]:
        """Send ``data`` (and ``then`` after ``pause`` seconds) on a new connection.

        Returns the final answer's status, headers and body, and every status line seen
        (a ``100 Continue`` comes first)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
            if then:
                writer.write(then)
                await writer.drain()
            seen = []
            async with asyncio.timeout(timeout):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    status = int(lines[0].split()[1])
                    seen.append(status)
                    if status != 100:
                        break
                headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
            assert b"Traceback" not in body
            return status, headers, body, seen
        finally:
            writer.close()

    async def post(self, body: bytes, *, headers: str = "", path: str = "/v1/observe",
                   **kw: Any) -> tuple[int, dict[str, str], bytes, list[int]]:
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{headers}\r\n").encode()
        return await self.raw(head + body, **kw)

    async def metrics(self) -> str:
        _, _, body, _ = await self.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return body.decode()


@contextlib.asynccontextmanager
async def served(tmp_path: Path, cert: Any, **cfg: Any) -> AsyncIterator[Served]:
    cfg.setdefault("rate_per_client", 1000.0)
    cfg.setdefault("burst_per_client", 1000)
    key = SigningKey.generate()
    app = create_app(NotaryConfig(data_dir=tmp_path, policy=LOOPBACK, **cfg), key)
    routed: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        routed.append(f"{request.method} {request.path}")
        return await handler(request)

    app.middlewares.insert(0, record)
    app[DIRECT_STANDS_FOR] = (record, *app[DIRECT_STANDS_FOR])  # skipped by the direct route on purpose: it shows which path ran
    bound: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    halt = asyncio.Event()
    async with tls_server(server_context(cert)) as site:
        task = asyncio.create_task(serve_app(app, "127.0.0.1", 0, app[GUARD], bound.set_result, stop=halt))
        try:
            _, port = await asyncio.wait_for(asyncio.shield(bound), 10)
            s = Served(app, key, port, site.port)
            s.routed = routed
            yield s
        finally:
            halt.set()
            await asyncio.wait_for(task, 20)


def _error(body: bytes) -> str:
    doc = json.loads(body)
    assert set(doc) == {"error", "reason"}, doc
    return str(doc["error"])


async def test_observe_is_served_directly_and_answers_verify(tmp_path: Path, cert: Any) -> None:
    async with served(tmp_path, cert) as s:
        answers = []
        for i in range(2):
            status, headers, body, _ = await s.post(s.body(i))
            assert status == 200, body
            assert headers["content-type"] == "application/json; charset=utf-8"
            answers.append(json.loads(body)["results"][0])
        for i, result in enumerate(answers):
            obs = open_answer(result["envelopes"], result["freshness"], s.key.verify_key)
            assert obs[0].status == "ok" and obs[0].nonce == nonce(i)
        assert [o["freshness"] for o in answers][0] != answers[1]["freshness"]
        assert open_answer(answers[1]["envelopes"], answers[1]["freshness"], s.key.verify_key)[0].source == "cached"
        # Neither observe went through the middleware chain; a routed path does.
        assert s.routed == []
        metrics = await s.metrics()
        assert s.routed == ["GET /metrics"]
        assert 'parallax_http_requests_total{code="200",route="/v1/observe"} 2.0' in metrics


async def test_other_spellings_take_the_routed_path_with_the_same_answer(tmp_path: Path, cert: Any) -> None:
    async with served(tmp_path, cert) as s:
        status, _, body, _ = await s.post(s.body(0), path="/v1/observe?x=1")
        assert status == 200, body
        assert s.routed == ["POST /v1/observe"]
        status, _, body, seen = await s.post(s.body(1), headers="Expect: 100-continue\r\n")
        assert status == 200 and seen == [100, 200], (seen, body)
        assert s.routed == ["POST /v1/observe", "POST /v1/observe"]
        status, headers, body, _ = await s.raw(b"GET /v1/observe HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 405 and _error(body) == "method_not_allowed" and "POST" in headers["allow"]


async def test_direct_route_errors_are_json_and_counted(tmp_path: Path, cert: Any) -> None:
    async with served(tmp_path, cert, max_body_bytes=2048) as s:
        status, _, body, _ = await s.post(b'{"targets": [')
        assert status == 400 and _error(body) == "bad_json"
        status, _, body, _ = await s.post(json.dumps({"targets": [], "nonce": nonce(0), "extra": 1}).encode())
        assert status == 400 and _error(body) == "bad_json" and b"extra" in body
        status, _, body, _ = await s.post(json.dumps({"targets": [], "nonce": nonce(0)}).encode())
        assert status == 400 and _error(body) == "bad_targets"
        status, _, body, _ = await s.post(s.body(0, max_age="soon"))
        assert status == 400 and _error(body) == "bad_max_age"
        big = json.dumps({"targets": [{"host": "a" * 3000, "port": 443}], "nonce": nonce(0)}).encode()
        status, _, body, _ = await s.post(big)
        assert status == 413 and _error(body) == "body_too_large"
        assert s.routed == []
        metrics = await s.metrics()
        assert 'parallax_http_requests_total{code="400",route="/v1/observe"} 4.0' in metrics
        assert 'parallax_http_requests_total{code="413",route="/v1/observe"} 1.0' in metrics


async def test_direct_route_reads_a_late_body_with_its_deadline(tmp_path: Path, cert: Any) -> None:
    async with served(tmp_path, cert, body_timeout=0.5) as s:
        body = s.body(0)
        head = (f"POST /v1/observe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        status, _, answer, _ = await s.raw(head + body[:10], then=body[10:], pause=0.2)
        assert status == 200, answer
        status, headers, answer, _ = await s.raw(head + body[:10])
        # The rest of the body never comes: a 400 body_timeout after the deadline, connection closed.
        assert status == 400 and _error(answer) == "body_timeout"
        assert headers.get("connection", "").lower() == "close"
        assert s.routed == []


async def test_direct_route_refuses_a_body_that_does_not_decode(tmp_path: Path, cert: Any) -> None:
    async with served(tmp_path, cert) as s:
        packed = zlib.compress(s.body(0))
        status, _, body, _ = await s.post(packed, headers="Content-Encoding: deflate\r\n")
        assert status == 200, body  # a good compressed body is decoded like the routed path does
        status, _, body, _ = await s.post(b"\x00not deflate at all", headers="Content-Encoding: deflate\r\n")
        assert status == 400 and _error(body) == "bad_encoding"


async def test_direct_route_rate_limits_with_retry_after(tmp_path: Path, cert: Any) -> None:
    async with served(tmp_path, cert, rate_per_client=0.01, burst_per_client=1, rate_limit_delay=0.0) as s:
        status, _, body, _ = await s.post(s.body(0))
        assert status == 200, body
        status, headers, body, _ = await s.post(s.body(1))
        assert status == 429 and _error(body) == "too_many_requests"
        assert int(headers["retry-after"]) >= 1
        assert s.routed == []


async def test_expect_continue_is_refused_before_the_100_when_the_answer_is_already_known(tmp_path: Path, cert: Any) -> None:
    """A body that will not be read is not asked for: the final answer comes instead of ``100 Continue``."""
    async with served(tmp_path, cert, max_body_bytes=2048, rate_per_client=0.01, burst_per_client=1,
                      rate_limit_delay=0.0) as s:
        # Only the head is sent: the client waits for the 100 (before: it came, then the wait for the body).
        head = ("POST /v1/observe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Expect: 100-continue\r\nContent-Length: {}\r\n\r\n")
        status, headers, body, seen = await s.raw(head.format(4096).encode(), timeout=5)
        assert seen == [413] and _error(body) == "body_too_large", (seen, body)
        assert headers.get("connection", "").lower() == "close"
        # A body that fits, from a client with a token: the 100, then the answer (the token is spent).
        ok = s.body(0)
        status, _, body, seen = await s.raw(head.format(len(ok)).encode(), then=ok, pause=0.2, timeout=5)
        assert seen == [100, 200], (seen, body)
        # No token left: a 429 with Retry-After at once, no 100.
        status, headers, body, seen = await s.raw(head.format(len(ok)).encode(), timeout=5)
        assert seen == [429] and _error(body) == "too_many_requests", (seen, body)
        assert int(headers["retry-after"]) >= 1
        metrics = await s.metrics()
        for code in (200, 413, 429):
            assert f'parallax_http_requests_total{{code="{code}",route="/v1/observe"}} 1.0' in metrics, metrics


async def test_an_unknown_expectation_without_serve_app_is_a_json_417(tmp_path: Path) -> None:
    """Outside ``serve_app`` (a plain aiohttp site) the observe route answers ``Expect: foo`` in JSON, counted."""
    app = create_app(NotaryConfig(data_dir=tmp_path, policy=LOOPBACK), SigningKey.generate())
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        s = Served(app, SigningKey.generate(), site._server.sockets[0].getsockname()[1], 0)  # type: ignore[union-attr]
        status, _, body, seen = await s.post(b"{}", headers="Expect: foo<script>\r\n", timeout=5)
        assert seen == [417] and _error(body) == "expectation_failed" and b"<script>" not in body, (seen, body)
        assert 'parallax_http_requests_total{code="417",route="/v1/observe"} 1.0' in await s.metrics()
    finally:
        await runner.cleanup()


def test_direct_dispatch_takes_only_the_exact_route() -> None:
    calls: list[str] = []

    async def direct(request: web.BaseRequest) -> web.StreamResponse:
        calls.append("direct")
        return web.Response()

    async def inner(request: web.BaseRequest) -> web.StreamResponse:
        calls.append("inner")
        return web.Response()

    handle = direct_dispatch({("POST", "/v1/observe"): direct}, inner)
    cases = [
        (make_mocked_request("POST", "/v1/observe"), "direct"),
        (make_mocked_request("GET", "/v1/observe"), "inner"),
        (make_mocked_request("POST", "/v1/observe?x=1"), "inner"),
        (make_mocked_request("POST", "/v1/%6Fbserve"), "inner"),
        (make_mocked_request("POST", "/v1/observe/"), "inner"),
        (make_mocked_request("POST", "/v1/observe", headers={"Expect": "100-continue"}), "inner"),
        (make_mocked_request("POST", "/healthz"), "inner"),
    ]
    for request, expected in cases:
        calls.clear()
        asyncio.run(handle(request))  # type: ignore[arg-type]
        assert calls == [expected], (request.method, request.raw_path, dict(request.headers))


async def test_serve_app_refuses_direct_routes_with_response_signals(tmp_path: Path) -> None:
    app = create_app(NotaryConfig(data_dir=tmp_path, policy=LOOPBACK), SigningKey.generate())
    assert DIRECT_ROUTES in app

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        pass

    app.on_response_prepare.append(on_prepare)
    with pytest.raises(RuntimeError, match="on_response_prepare"):
        await asyncio.wait_for(serve_app(app, "127.0.0.1", 0, app[GUARD], stop=asyncio.Event()), 20)


async def test_serve_app_refuses_a_middleware_the_direct_routes_would_skip(tmp_path: Path) -> None:
    """An allow-list or auth middleware added to the app must not silently miss POST /v1/observe."""
    app = create_app(NotaryConfig(data_dir=tmp_path, policy=LOOPBACK), SigningKey.generate())

    @web.middleware
    async def deny_all(request: web.Request, handler: Any) -> web.StreamResponse:
        raise web.HTTPForbidden()

    app.middlewares.append(deny_all)
    with pytest.raises(RuntimeError, match="skip middlewares"):
        await asyncio.wait_for(serve_app(app, "127.0.0.1", 0, app[GUARD], stop=asyncio.Event()), 20)


@pytest.mark.parametrize("path, body, expected", [
    ("/healthz", None, 200),
    ("/v1/observe", b"{}", 400),  # routed (an Expect header), answered with its usual JSON error
    ("/nowhere", None, 404),
])
async def test_an_unknown_expectation_is_ignored_not_a_plain_text_417(tmp_path: Path, cert: Any, path: str,
                                                                    body: bytes | None, expected: int) -> None:
    """aiohttp alone answers ``Expect: foo`` with a plain-text 417 echoing the header, uncounted."""
    async with served(tmp_path, cert) as s:
        if body is None:
            status, headers, answer, seen = await s.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\nExpect: foo<script>\r\n\r\n".encode())
        else:
            status, headers, answer, seen = await s.post(body, path=path, headers="Expect: foo<script>\r\n")
        assert status == expected and seen == [expected], (seen, answer)
        assert b"<script>" not in answer
        if expected != 200:
            _error(answer)  # a JSON error body
        metrics = await s.metrics()
        assert f'parallax_http_requests_total{{code="{expected}"' in metrics and 'code="417"' not in metrics, metrics
        assert s.routed[0] == f"{'POST' if body else 'GET'} {path}"  # through the app's middleware: counted


async def test_a_request_whose_client_is_gone_is_neither_charged_nor_served(tmp_path: Path, cert: Any) -> None:
    """Review of uvloop (on both loops): a request aiohttp had parsed before its client reset
    was still handled, with ``request.remote`` None, so it was charged to one shared ``"?"``
    bucket (whoever else vanished shared it) and its target was probed for no one.  Now such a
    request is answered ``client_gone`` (499 in the request counts) before any token or probe."""
    async with served(tmp_path, cert, rate_per_client=0.001, burst_per_client=100) as s:
        def ask_then_reset(i: int) -> None:  # a blocking client on its own thread, as a real one is
            with socket.create_connection(("127.0.0.1", s.port)) as sock:
                sock.sendall(f"GET /v1/observe/127.0.0.1/{s.target_port}?nonce={nonce(i)} HTTP/1.1\r\n"
                             "Host: x\r\n\r\n".encode())
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # closed with linger 0: a reset right behind the request

        for i in range(20):
            await asyncio.to_thread(ask_then_reset, i)
        await asyncio.sleep(1.0)  # the handlers of the requests that were parsed run now
        # A bucket never charged is full: all 100 tokens, no wait.
        assert s.app[LIMITER].check("?", time.monotonic(), 100) == 0
        metrics = await s.metrics()
        gone = sum(float(ln.rsplit(" ", 1)[1]) for ln in metrics.splitlines()
                   if ln.startswith("parallax_http_requests_total{") and 'code="499"' in ln)
        assert gone >= 1, [ln for ln in metrics.splitlines() if ln.startswith("parallax_http_requests_total")]
        status, _, body, _ = await s.post(s.body(99))  # the notary serves the next client as before
        assert status == 200, body
