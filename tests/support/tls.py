"""Real TLS servers on loopback for tests (trustme certificates, asyncio servers).

Every server here is a real listening socket on 127.0.0.1 doing a real TLS
handshake with OpenSSL through Python's ``ssl`` module.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator

import trustme

from client.devtools import port_of, serving
from notary.core import spki_sha256

__all__ = ["TLSServer", "tls_server", "tls_target_in_thread", "server_context", "leaf_spki", "make_ca"]


def make_ca(key_type: str = "ecdsa") -> trustme.CA:
    kt = trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA
    return trustme.CA(key_type=kt)


def server_context(
    cert: trustme.LeafCert,
    *,
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def leaf_spki(cert: trustme.LeafCert) -> str:
    """SPKI SHA-256 hex of the leaf that ``cert`` serves."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = cert.cert_chain_pems[0].bytes()
    return spki_sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))


@dataclass
class TLSServer:
    host: str
    port: int
    server: asyncio.base_events.Server
    handshakes: int = 0


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: TLSServer) -> None:
    srv.handshakes += 1
    try:
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def tls_server(ctx: ssl.SSLContext, host: str = "127.0.0.1") -> AsyncIterator[TLSServer]:
    """Serve ``ctx`` on an ephemeral loopback port until the block ends."""
    holder: list[TLSServer] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _serve_one(r, w, holder[0])

    async with serving(handle, host, ssl_ctx=ctx) as server:
        holder.append(TLSServer(host, port_of(server), server))
        yield holder[0]


@contextlib.contextmanager
def tls_target_in_thread(ctx) -> Iterator[TLSServer]:
    """A real TLS server on 127.0.0.1, on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["stop"] = asyncio.Event()
        async with tls_server(ctx) as srv:
            holder["srv"] = srv
            ready.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "TLS target did not start"
        yield holder["srv"]
    finally:
        if "stop" in holder:
            loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
