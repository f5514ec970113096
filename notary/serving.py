"""Running an aiohttp app behind the connection guard, with JSON answers to malformed HTTP.

:func:`start_serving` is the one way a notary app is served (``parallax serve``
through :func:`serve_app`, and :func:`client.cluster.local_cluster`).
:data:`DIRECT_ROUTES` (an app key) names the few routes that :func:`start_serving`
hands to their handler straight from aiohttp's protocol, without the router and
the middleware chain (see :func:`direct_dispatch`): ``POST /v1/observe``, which
is most of a notary's traffic.  Such a handler does its middleware's work itself,
so the app names the middlewares it stands in for (:data:`DIRECT_STANDS_FOR`):
:func:`start_serving` refuses to start when the app has any other middleware, which
the direct routes would silently skip.

Under :func:`start_serving` an ``Expect`` header other than ``100-continue`` is
ignored (RFC 9110 section 10.1.1 lets a server answer 417 or not): the request
is answered, counted and its errors are JSON like any other.  aiohttp itself
would answer a plain-text 417 that echoes the header, from outside the app's
middleware (uncounted), on every route.

:class:`GuardedSite` is aiohttp's ``TCPSite`` with the protocol factory wrapped
by a :class:`~notary.connguard.ConnectionGuard`.  :func:`json_parse_errors`
turns aiohttp's answer to a request it could not parse (bad or duplicate
``Content-Length``, ``Transfer-Encoding`` with ``Content-Length``, an over-long
request line or header, an unknown method, an unsupported ``Content-Encoding``)
from ``text/plain`` that echoes part of the request, logged with a traceback,
into ``{"error": "bad_http" | "bad_encoding", "reason": ...}`` with a fixed
reason and no traceback: a client's mistake is counted, not logged per event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from typing import Any, Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp import http_exceptions as _hx
from aiohttp.web_protocol import RequestHandler

from notary.connguard import Acceptor, ConnectionGuard, Throttled
from notary.httputil import BodyTooLarge

__all__ = ["DIRECT_ROUTES", "DIRECT_STANDS_FOR", "DirectHandler", "GuardedSite", "direct_dispatch", "json_parse_errors", "received_body", "serve_app",
           "start_serving", "ParseErrors"]

log = logging.getLogger("parallax.notary")


class ParseErrors:
    """Counts of malformed requests by error code (shared by every connection of a process)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.throttled = Throttled(log, 10.0)


PARSE_ERRORS = ParseErrors()


_BAD_METHOD: tuple[type[BaseException], ...] = tuple(
    c for c in (getattr(_hx, "BadHttpMethod", None),) if c is not None  # aiohttp >= 3.11
)


def _describe(exc: BaseException | None) -> tuple[str, str]:
    if isinstance(exc, _hx.ContentEncodingError):
        return "bad_encoding", "unsupported or malformed Content-Encoding"
    if isinstance(exc, _BAD_METHOD):
        return "bad_http", "unknown HTTP method"
    if isinstance(exc, _hx.LineTooLong):
        return "bad_http", "request line or header too long"
    return "bad_http", "malformed HTTP request"


class _JsonErrors(RequestHandler):
    """aiohttp's protocol with JSON error answers (no new state: instances are re-classed)."""

    __slots__ = ()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, (_hx.HttpProcessingError, web.RequestPayloadError)):
            PARSE_ERRORS.throttled.warning("payload", "malformed request body")  # a client's mistake
            return
        super().log_exception(*args, **kw)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error answer")
        if status >= 500 and not isinstance(exc, _hx.HttpProcessingError):
            log.error("unexpected error handling a request", exc_info=exc)
            code, reason = "internal", "internal error"
        else:
            code, reason = _describe(exc)
            status = 400 if status < 400 or status >= 500 else status
            PARSE_ERRORS.counts[code] = PARSE_ERRORS.counts.get(code, 0) + 1
            PARSE_ERRORS.throttled.warning(code, f"malformed request ({code}: {reason})")
        resp = web.Response(status=status, body=json.dumps({"error": code, "reason": reason}).encode(),
                            content_type="application/json")
        resp.force_close()
        return resp


def json_parse_errors(factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
    """Wrap aiohttp's protocol factory so that parse errors answer JSON (see module doc)."""
    def make() -> asyncio.Protocol:
        proto = factory()
        if type(proto) is RequestHandler:
            proto.__class__ = _JsonErrors  # same layout (no slots added); only handle_error differs
        return proto
    return make


DirectHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
#: ``{(method, path): handler}``: requests that :func:`serve_app` gives to ``handler`` directly.
DIRECT_ROUTES = web.AppKey("direct_routes", dict)
#: The app's middlewares, in order, whose work the direct handlers do themselves; :func:`serve_app`
#: refuses an app with direct routes whose ``middlewares`` are not exactly these.
DIRECT_STANDS_FOR = web.AppKey("direct_stands_for", tuple)


def direct_dispatch(routes: dict[tuple[str, str], DirectHandler], inner: DirectHandler) -> DirectHandler:
    """A request handler for aiohttp's ``Server``: ``routes`` directly, everything else to ``inner``.

    ``inner`` is the application's own handler (router, middlewares).  A request is
    served directly only when its method and request target are exactly a key of
    ``routes`` (no query string, no percent-encoding, no absolute form) and it does
    not ask for ``Expect: 100-continue`` handling; anything else takes the routed path,
    which answers it exactly as before.  A direct handler has no ``match_info`` (so no
    ``request.app``), and aiohttp's ``on_response_prepare`` signals do not run for it.
    """
    def handle(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        direct = routes.get((request.method, request.raw_path))
        if direct is None or hdrs.EXPECT in request.headers:
            expect = request.headers.get(hdrs.EXPECT)
            if expect and expect.lower() != "100-continue":
                request = _without_expect(request)
            return inner(request)
        return direct(request)
    return handle


def _without_expect(request: web.BaseRequest) -> web.BaseRequest:
    """The request without its ``Expect`` header (an expectation this server does not know: ignored,
    as RFC 9110 allows).  Taken before the body is read; the clone shares the body stream."""
    return request.clone(headers=[(k, v) for k, v in request.headers.items() if k.lower() != "expect"])


def received_body(request: web.BaseRequest, limit: int) -> bytes | None:
    """The body of a direct route's request if all of it has arrived (with the head, usually), else None.

    Only for a request straight from the protocol (its body is its payload stream); the
    caller reads a body still arriving with :func:`notary.httputil.read_request_body`.
    Raises :class:`~notary.httputil.BodyTooLarge` over ``limit`` bytes.
    """
    stream = request.content
    if not stream.is_eof() or stream.exception() is not None:
        return None  # still arriving, or undecodable: read_request_body's deadline and errors apply
    raw = stream.read_nowait()
    if len(raw) > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    return raw


def _listen(host: str | None, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket for ``host:port`` (``reuse_address`` like aiohttp's sites)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass the guard and answer parse errors in JSON."""

    __slots__ = ("_host", "_port", "_guard", "_bound", "_sock")

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, guard: ConnectionGuard,
                 sock: socket.socket | None = None) -> None:
        super().__init__(runner, backlog=guard.limits.backlog)
        self._host = host
        self._port = port
        self._guard = guard
        self._sock = sock  # an already bound socket (``--workers``: each worker's SO_REUSEPORT socket)
        self._bound: tuple[str, int] | None = None

    @property
    def name(self) -> str:
        host, port = self._bound or (self._host or "0.0.0.0", self._port)
        return f"http://{host}:{port}"

    @property
    def bound(self) -> tuple[str, int]:
        """The (host, port) actually bound (port 0 resolved)."""
        assert self._bound is not None, "site not started"
        return self._bound

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        factory = json_parse_errors(server)
        sock = self._sock if self._sock is not None else _listen(self._host, self._port)
        sock.listen(self._backlog)
        acceptor = Acceptor(self._guard, factory, sock)
        self._server = acceptor  # type: ignore[assignment]  # BaseSite.stop() only calls close()
        name = sock.getsockname()
        self._bound = (str(name[0]), int(name[1]))


async def start_serving(app: web.Application, host: str | None, port: int, guard: ConnectionGuard, *,
                        sock: socket.socket | None = None,
                        access_log: logging.Logger | None = None) -> tuple[web.AppRunner, GuardedSite]:
    """Set ``app`` up and start accepting behind ``guard``, on ``sock`` if given (else ``host:port``).

    The one way a notary app is served, by ``parallax serve`` (:func:`serve_app`) and by
    :func:`client.cluster.local_cluster` alike: the guard admits each connection, parse
    errors are answered in JSON, and the app's :data:`DIRECT_ROUTES` skip the router.
    Returns the runner (``cleanup()`` stops everything) and the started site.  Raises
    ``RuntimeError`` for an app whose direct routes would skip a middleware or signal.
    """
    runner = web.AppRunner(app, access_log=access_log, keepalive_timeout=guard.limits.idle_timeout + 5,
                           shutdown_timeout=5.0)
    await runner.setup()
    try:
        routes = app.get(DIRECT_ROUTES)
        if routes:
            if app.on_response_prepare:
                raise RuntimeError("direct routes skip on_response_prepare signals: the app has some")
            if tuple(app.middlewares) != app.get(DIRECT_STANDS_FOR, ()):
                raise RuntimeError("direct routes would skip middlewares they do not stand in for: "
                                   "name them in DIRECT_STANDS_FOR, or do not add them")
            server = runner.server
            assert server is not None
            # Server.request_handler is what each new connection's protocol calls per request.
            server.request_handler = direct_dispatch(routes, server.request_handler)
        site = GuardedSite(runner, host, port, guard, sock)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site


async def serve_app(app: web.Application, host: str, port: int, guard: ConnectionGuard,
                    on_bound: Callable[[tuple[str, int]], None] | None = None,
                    stop: asyncio.Event | None = None, access_log: logging.Logger | None = None,
                    sock: socket.socket | None = None) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (or ``stop`` is set), on ``sock`` if given (else ``host:port``).

    ``on_bound`` runs once the listener is bound, and only then (the CLI writes
    ``identity.json`` there, so a ``serve`` that cannot bind changes nothing).
    """
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(guard.exception_handler(loop.get_exception_handler()))
    runner, site = await start_serving(app, host, port, guard, sock=sock, access_log=access_log)
    try:
        if on_bound is not None:
            on_bound(site.bound)
        stop = stop or asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await stop.wait()
    finally:
        await runner.cleanup()
