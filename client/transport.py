"""How the client sends one HTTP request to a notary or a relay: a small interface, two implementations.

:class:`Transport` is what the fan-out (:mod:`client.fanout`) and the relay
path (:mod:`client.ohttp`) call: ``await transport.request(method, url,
body=..., content_type=...)`` returns an :class:`~client.http1.HttpResponse`
(status, media type, whole body).  Every implementation keeps the same
guarantees:

* redirects are never followed: a 3xx is returned as a response, and the
  callers treat it as a bad answer;
* a body larger than :data:`MAX_RESPONSE_BYTES` is refused (an error, not a
  truncated body);
* ``https://`` URLs use TLS with normal certificate and host name verification;
* network failures raise :class:`OSError` (``ssl.SSLError`` included), a
  malformed or oversized answer :class:`~notary.errors.RemoteError`; timeouts
  are the caller's (``asyncio.timeout`` around the call).

The two implementations:

* :class:`client.pool.NotaryPool`, the default: a lean keep-alive HTTP/1.1
  connection pool per event loop (:func:`client.pool.shared_pool`); it costs
  a fraction of an aiohttp request's CPU, which a check pays five times;
* :class:`SessionTransport`: the caller's own :class:`aiohttp.ClientSession`
  (``verify_with_notaries(session=...)``), with its connector, proxies and
  TLS settings, and ``allow_redirects=False`` on every request.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import aiohttp

from notary.httputil import read_capped
from client.http1 import HttpProtocolError, HttpResponse

__all__ = ["Transport", "SessionTransport", "as_transport", "MAX_RESPONSE_BYTES"]

#: Bytes a notary's (or relay's) answer may take.
MAX_RESPONSE_BYTES = 4 << 20


@runtime_checkable
class Transport(Protocol):
    """Sends one request and returns the whole response (see the module docstring for the contract)."""

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      content_type: str | None = None) -> HttpResponse: ...


class SessionTransport:
    """:class:`Transport` over a caller's :class:`aiohttp.ClientSession` (never follows redirects)."""

    __slots__ = ("session",)

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      content_type: str | None = None) -> HttpResponse:
        headers = {"Content-Type": content_type} if content_type is not None else None
        try:
            async with self.session.request(method, url, data=body, headers=headers, allow_redirects=False) as resp:
                raw = await read_capped(resp.content, MAX_RESPONSE_BYTES)
                return HttpResponse(resp.status, resp.content_type.lower(), raw)
        except aiohttp.ClientConnectionError as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise HttpProtocolError(f"{type(exc).__name__}: {exc}") from None


def as_transport(conn: "Transport | aiohttp.ClientSession") -> Transport:
    """A :class:`Transport` for ``conn``: an aiohttp session is wrapped, a transport returned as is."""
    if isinstance(conn, aiohttp.ClientSession):
        return SessionTransport(conn)
    return conn
