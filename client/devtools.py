"""Development tools: a throw-away CA, a local TLS site and an intercepting proxy.

Used by ``parallax demo``, the tests, the benchmarks and the lab.  The
interceptor behaves like a corporate or state TLS interceptor: it terminates
the client's TLS with a certificate forged for the target name (issued by its
own CA), opens its own TLS connection to the real site, and relays bytes.
Requires the ``trustme`` package (the ``demo`` or ``test`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

__all__ = ["TLSSite", "serving", "port_of", "tls_site", "interceptor", "make_cert_context", "StaticResolver"]


class StaticResolver:
    """A hosts-file-like resolver: fixed answers for some names, the system resolver for the rest."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = {k.lower(): list(v) for k, v in table.items()}

    async def resolve(self, host: str, port: int) -> list[str]:
        if host in self.table:
            return list(self.table[host])
        from notary.prober import SystemResolver

        return await SystemResolver().resolve(host, port)


def make_cert_context(*names: str, key_type: str = "ecdsa", org: str = "Parallax demo") -> ssl.SSLContext:
    """A server context with a fresh CA-issued certificate for ``names``."""
    try:
        import trustme
    except ImportError:  # pragma: no cover
        from notary.errors import ConfigError

        raise ConfigError("the demo needs trustme: pip install 'parallax-notary[demo]'") from None
    ca = trustme.CA(key_type=trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA, organization_name=org)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names, key_type=trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA).configure_cert(ctx)
    return ctx


@dataclass
class TLSSite:
    host: str
    port: int
    connections: int = 0


_PAGE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 20\r\nconnection: close\r\n\r\nhello from the site\n"


@contextlib.asynccontextmanager
async def serving(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                  host: str | list[str] = "127.0.0.1", port: int = 0,
                  ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[asyncio.Server]:
    """``asyncio.start_server(handle)`` on ``host:port`` (0: an ephemeral port; TLS with ``ssl_ctx``,
    a 5 s handshake timeout) until the block ends; then closed, waiting at most 2 s for its connections."""
    server = await asyncio.start_server(handle, host, port, ssl=ssl_ctx, ssl_handshake_timeout=5 if ssl_ctx else None)
    try:
        yield server
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def port_of(server: asyncio.Server) -> int:
    """The port ``server`` listens on (its first socket's)."""
    return int(server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def tls_site(ctx: ssl.SSLContext, host: str | list[str] = "127.0.0.1", port: int = 0) -> AsyncIterator[TLSSite]:
    """A tiny HTTPS site answering one fixed page per connection."""
    site = TLSSite(host if isinstance(host, str) else host[0], 0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        site.connections += 1
        try:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError, ssl.SSLError):
                await asyncio.wait_for(reader.read(4096), 0.5)
            writer.write(_PAGE)
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async with serving(handle, host, port, ctx) as server:
        site.port = port_of(server)
        yield site


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.asynccontextmanager
async def interceptor(
    forged: ssl.SSLContext, upstream: tuple[str, int], *, sni: str | None = None,
    host: str = "127.0.0.1", port: int = 0,
) -> AsyncIterator[TLSSite]:
    """A TLS-intercepting proxy: forged certificate towards the client, real TLS upstream."""
    up_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    up_ctx.check_hostname = False
    up_ctx.verify_mode = ssl.CERT_NONE
    me = TLSSite(host, 0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me.connections += 1
        try:
            ur, uw = await asyncio.wait_for(
                asyncio.open_connection(upstream[0], upstream[1], ssl=up_ctx, server_hostname=sni), 5)
        except (TimeoutError, OSError, ssl.SSLError):
            writer.close()
            return
        await asyncio.gather(_pipe(reader, uw), _pipe(ur, writer))

    async with serving(handle, host, port, forged) as server:
        me.port = port_of(server)
        yield me
