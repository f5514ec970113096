"""What every ``parallax conformance`` check runs on (the checks are :mod:`client.conformance_checks`).

A check's outcome (:class:`CheckResult`: ``pass``, ``fail`` or ``skip`` with a
one-line detail), the two exceptions a check raises to fail or skip, the run's
context (the notary's base URL, the session, the per-request ``timeout`` in
seconds, the clock, what the identity check learnt), the canary listener on
127.0.0.1 the refusal and limit checks name, and the one way a check talks to
the notary: :func:`_request`, which never follows a redirect and reads at most
``MAX_RESPONSE`` bytes (4 MiB) of an answer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from notary.httputil import BodyTooLarge, read_capped
from notary.core import Identity, VerifyKey, canonical_decode
from notary.errors import EncodingError

__all__ = [
    "CheckResult", "DEFAULT_MAX_BODY", "DEFAULT_MAX_TARGETS", "MAX_ENVELOPES", "MAX_RESPONSE", "MAX_SKEW",
    "REFUSAL_TARGETS",
]

#: The refusal checks: (name, address).  Both name 127.0.0.1, so that a notary that
#: wrongly connects reaches the run's own listener (when on this machine), never a
#: private network or a service on a well-known port.
REFUSAL_TARGETS = (("refuse loopback", "127.0.0.1"), ("refuse ipv4-mapped", "::ffff:127.0.0.1"))
MAX_SKEW = 300
MAX_RESPONSE = 4 << 20
MAX_ENVELOPES = 16
DEFAULT_MAX_TARGETS = 16
DEFAULT_MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: str  # pass | fail | skip
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


class _Fail(Exception):
    """A failed check (the message is the one-line reason)."""


class _Skip(Exception):
    """A check that cannot run here (the message says why)."""


@dataclass
class _Response:
    status: int
    content_type: str
    body: bytes


@dataclass
class _Ctx:
    base: str
    session: aiohttp.ClientSession
    timeout: float
    clock: Callable[[], float]
    key: VerifyKey | None = None
    identity: Identity | None = None
    limits: dict[str, int] = field(default_factory=dict)
    canary: "_Canary | None" = None

    @property
    def canary_port(self) -> int:
        assert self.canary is not None
        return self.canary.port


class _Canary:
    """A TCP listener on 127.0.0.1 (ephemeral port) that counts and closes every connection.

    The only place a wrongly-connecting notary on this machine can reach.
    """

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _on_connect(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aenter__(self) -> "_Canary":
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except (TimeoutError, OSError):
                pass


async def _request(ctx: _Ctx, method: str, path: str, *, data: bytes | None = None,
                   headers: dict[str, str] | None = None) -> _Response:
    try:
        async with asyncio.timeout(ctx.timeout):
            async with ctx.session.request(method, ctx.base + path, data=data, headers=headers,
                                           allow_redirects=False) as r:
                if 300 <= r.status < 400:
                    where = r.headers.get("Location", "")[:120]
                    raise _Fail(f"{method} {path}: redirect (HTTP {r.status} to {where!r}); redirects are never followed")
                try:
                    body = await read_capped(r.content, MAX_RESPONSE)
                except BodyTooLarge:
                    raise _Fail(f"{method} {path}: response larger than {MAX_RESPONSE} bytes") from None
                return _Response(r.status, r.headers.get("Content-Type", ""), body)
    except TimeoutError:
        raise _Fail(f"{method} {path}: no answer within {ctx.timeout:g}s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _Fail(f"{method} {path}: {type(exc).__name__}: {exc}"[:300]) from None


def _json(resp: _Response, what: str, *, strict: bool = False) -> Any:
    if "json" not in resp.content_type.lower():
        raise _Fail(f"{what}: Content-Type is {resp.content_type or 'missing'!r}, not JSON")
    try:
        return canonical_decode(resp.body, max_bytes=MAX_RESPONSE) if strict else json.loads(resp.body)
    except (EncodingError, ValueError) as exc:
        raise _Fail(f"{what}: body is not valid JSON: {exc}"[:300]) from None


def _expect_200(resp: _Response, what: str) -> None:
    if resp.status != 200:
        raise _Fail(f"{what}: HTTP {resp.status} {resp.body[:120]!r}")
