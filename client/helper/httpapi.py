"""``parallax helper serve-http``: an opt-in localhost API for clients that cannot use native messaging.

It listens on 127.0.0.1 only and answers ``POST /v1/check`` and
``POST /v1/ping`` with the same JSON objects as the native host (the body is the
request without ``type``).  Every request must pass, in this order:

1. ``Host`` is exactly ``127.0.0.1:PORT`` or ``localhost:PORT`` (a DNS-rebinding
   page reaches the port under its own name, so its Host is refused)  -> 403;
2. ``Origin``, when present, is in the allowlist (exact match; ``null`` is
   never allowed; non-browser clients send none)                        -> 403;
3. the method is POST (OPTIONS answers a CORS preflight for allowed
   origins only)                                                        -> 405;
4. ``X-Parallax-Token`` equals the per-install token (constant-time)    -> 401;
5. ``Content-Type`` is ``application/json``                              -> 415;
6. the body is a JSON object of at most 1 MiB                           -> 413 / 400.

CORS answers name the one allowed origin that asked, never ``*``.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import platformdirs
from aiohttp import web

from notary.connguard import ConnectionGuard, ConnLimits
from notary.errors import InputError
from notary.httputil import BodyTooLarge, ClientGone, read_request_body
from notary.serving import GuardedSite

from client.helper.framing import MAX_IN, BadMessage, decode_message
from client.helper.service import HelperService

__all__ = ["TOKEN_HEADER", "DEFAULT_PORT", "create_http_app", "default_token_path", "load_or_create_token", "allowed_hosts"]

TOKEN_HEADER = "X-Parallax-Token"
DEFAULT_PORT = 7643
BODY_TIMEOUT = 10.0  # seconds for a whole request body (a slow sender gets a 400 body_timeout)
ALLOWED = web.AppKey("allowed", dict)
_PATHS = {"/v1/check": "check", "/v1/ping": "ping"}


def default_token_path() -> Path:
    return Path(platformdirs.user_config_dir("parallax")) / "helper-token"


def load_or_create_token(path: str | os.PathLike[str] | None = None) -> tuple[str, Path]:
    """The per-install token (created 0600 on first use) and where it lives."""
    p = Path(path) if path else default_token_path()
    try:
        token = p.read_text().strip()
        if len(token) >= 16:
            return token, p
    except FileNotFoundError:
        pass
    p.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(p, 0o600)
    return token, p


def allowed_hosts(port: int) -> set[str]:
    return {f"127.0.0.1:{port}", f"localhost:{port}"}


def _deny(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"type": "error", "id": None, "error": code, "message": message}, status=status,
                             headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **(headers or {})})


def create_http_app(
    handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | HelperService,
    token: str,
    *,
    port: int,
    origins: Iterable[str] = (),
    body_timeout: float = BODY_TIMEOUT,
) -> web.Application:
    """The localhost API.  ``port`` fixes the Host allowlist; update ``app[ALLOWED]["hosts"]`` after an ephemeral bind.

    A request body must arrive whole within ``body_timeout`` seconds.
    """
    answer = handle.handle if isinstance(handle, HelperService) else handle
    expected = token.encode()
    allowed = {"hosts": allowed_hosts(port), "origins": {o.rstrip("/") for o in origins if o and o != "null"}}

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        conf = request.app[ALLOWED]
        host = request.headers.get("Host", "")
        if host.lower() not in conf["hosts"]:
            return _deny(403, "bad_host", "Host header not allowed (this API answers 127.0.0.1 and localhost only)")
        origin = request.headers.get("Origin")
        cors: dict[str, str] = {"Vary": "Origin"}
        if origin is not None:
            if origin not in conf["origins"]:
                return _deny(403, "bad_origin", "Origin not allowed", cors)
            cors["Access-Control-Allow-Origin"] = origin
        if request.method == "OPTIONS" and origin is not None:
            return web.Response(status=204, headers={
                **cors, "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": f"Content-Type, {TOKEN_HEADER}", "Access-Control-Max-Age": "600",
            })
        if request.method != "POST":
            return _deny(405, "method_not_allowed", "only JSON POST is accepted", {**cors, "Allow": "POST"})
        given = request.headers.get(TOKEN_HEADER, "").encode("utf-8", "surrogateescape")
        if not given or not hmac.compare_digest(given, expected):
            return _deny(401, "bad_token", f"missing or wrong {TOKEN_HEADER} header", cors)
        if request.content_type != "application/json":
            return _deny(415, "bad_content_type", "Content-Type must be application/json", cors)
        resp = await handler(request)
        resp.headers.update(cors)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    async def endpoint(request: web.Request) -> web.StreamResponse:
        kind = _PATHS.get(request.path)
        if kind is None:
            return _deny(404, "not_found", "POST /v1/check or /v1/ping")
        if request.content_length is not None and request.content_length > MAX_IN:
            return _deny(413, "frame_too_large", f"body larger than {MAX_IN} bytes")
        try:
            body = await read_request_body(request, limit=MAX_IN, timeout=body_timeout)
        except (BodyTooLarge, web.HTTPRequestEntityTooLarge):
            return _deny(413, "frame_too_large", f"body larger than {MAX_IN} bytes")
        except ClientGone:
            denied = _deny(400, "bad_request", "the client disconnected mid-body")
            denied.force_close()
            return denied
        except InputError as exc:  # bad_encoding (a body that does not decode) or body_timeout (a slow sender)
            denied = _deny(400, exc.code, str(exc))
            denied.force_close()  # the rest of the body is unreadable: do not linger over it
            return denied
        try:
            msg = decode_message(body) if body else {}
        except BadMessage as exc:
            return _deny(400, exc.code, str(exc))
        msg["type"] = kind
        resp = await answer(msg)
        status = 200 if resp.get("type") != "error" else 400 if resp.get("error") not in ("internal",) else 500
        return web.Response(text=json.dumps(resp), status=status, content_type="application/json")

    app = web.Application(middlewares=[guard], client_max_size=MAX_IN)
    app[ALLOWED] = allowed
    app.router.add_route("*", "/{tail:.*}", endpoint)
    return app


async def start_http(
    service: HelperService, token: str, *, port: int = DEFAULT_PORT, origins: Iterable[str] = (),
    body_timeout: float = BODY_TIMEOUT,
) -> tuple[web.AppRunner, int]:
    """Bind 127.0.0.1:``port`` (0: ephemeral) and return the runner and the bound port."""
    app = create_http_app(service, token, port=port, origins=origins, body_timeout=body_timeout)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # The notary's site: head and idle deadlines, connection caps, and malformed HTTP
    # (an unknown Content-Encoding, a duplicate Content-Length) answered in JSON.
    site = GuardedSite(runner, "127.0.0.1", port, ConnectionGuard(ConnLimits()))
    await site.start()
    bound = site.bound[1]
    app[ALLOWED]["hosts"] = allowed_hosts(bound)
    return runner, bound
