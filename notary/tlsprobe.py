"""One TLS client handshake that records what a server presents: the prober's TLS part.

:class:`Handshake` drives OpenSSL over an :class:`ssl.MemoryBIO` pair (bytes in,
bytes out, no I/O), so every byte the server sends is counted: more than
``max_bytes`` is ``chain_too_large``, and a first byte that does not start a TLS
record is ``not_tls``.  It offers TLS 1.2 and 1.3 with SNI, does *not* validate
the chain (it records what it is shown; the quorum judges it) and captures the
whole presented chain.  :func:`handshake_over_streams` drives it over a stream
pair: a plain TCP connection, or a SOCKS tunnel.  (Driving it from a protocol's
callbacks instead was measured no cheaper: 786 against 776 µs of CPU a probe
on uvloop, 923 against 903 µs on asyncio's loop.)

Every failure is a :class:`ProbeFailure` with a probe status;
:mod:`notary.prober` turns it into a :class:`~notary.core.ProbeResult`.
"""

from __future__ import annotations

import asyncio
import ssl

__all__ = ["READ_SIZE", "ProbeFailure", "client_context", "unverified_chain", "Handshake",
           "handshake_over_streams"]

#: Bytes read from a target at a time.
READ_SIZE = 16 * 1024


class ProbeFailure(Exception):
    """A probe that failed, as its status and detail (data, not an error: the prober records it)."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def client_context() -> ssl.SSLContext:
    """TLS 1.2 and 1.3, no chain or name validation: the chain is recorded, not judged."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we record what is presented; the quorum judges it
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def unverified_chain(obj: ssl.SSLObject) -> tuple[bytes, ...]:
    """The chain the peer presented, DER, leaf first.

    Python 3.13 has the public ``SSLObject.get_unverified_chain()``; 3.10-3.12
    have it on the private ``_sslobj``.  Falls back to the leaf alone.
    """
    getter = getattr(obj, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(obj, "_sslobj", None), "get_unverified_chain", None)
    chain: list[bytes] = []
    if getter is not None:
        for cert in getter() or ():
            if isinstance(cert, bytes):
                chain.append(cert)
            else:  # 3.10-3.12: _ssl.Certificate
                chain.append(cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
    if not chain:
        leaf = obj.getpeercert(binary_form=True)
        if leaf:
            chain.append(leaf)
    return tuple(chain)


class Handshake:
    """One TLS client handshake over an :class:`ssl.MemoryBIO` pair: bytes in, bytes out, no I/O.

    :func:`handshake_over_streams` drives it.
    It counts every byte the server sends: more than ``max_bytes`` is
    ``chain_too_large``; a first byte that does not start a TLS record (handshake
    or alert) is ``not_tls``.  Every failure is raised as ``ProbeFailure``.
    """

    __slots__ = ("_incoming", "_outgoing", "_obj", "_max", "received", "done")

    def __init__(self, ctx: ssl.SSLContext, sni: str | None, max_bytes: int) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._incoming, self._outgoing, server_side=False, server_hostname=sni)
        self._max = max_bytes
        self.received = 0
        self.done = False

    def step(self) -> bytes:
        """Advance the handshake; return the bytes to send now (the first call: the ClientHello)."""
        try:
            self._obj.do_handshake()
            self.done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            if exc.reason == "EXCESSIVE_MESSAGE_SIZE":
                # OpenSSL refuses a handshake message (the Certificate message) above
                # its own cap (100 KiB) before our byte count reaches the limit.
                raise ProbeFailure("chain_too_large", "a handshake message exceeded the size limit") from None
            raise ProbeFailure("tls_failed", f"TLS error: {exc.reason or exc}") from None
        return self._outgoing.read()

    def feed(self, data: bytes | memoryview) -> bytes:
        """Take bytes the server sent; return the bytes to send now."""
        if self.received == 0 and data[0] not in (0x15, 0x16):
            raise ProbeFailure("not_tls", "the server did not answer with a TLS record")
        self.received += len(data)
        if self.received > self._max:
            raise ProbeFailure("chain_too_large", f"handshake exceeded {self._max} bytes")
        self._incoming.write(data)
        return self.step()

    def closed(self) -> ProbeFailure:
        """The server closed the connection before the handshake completed."""
        return ProbeFailure("tls_failed" if self.received else "reset", "connection closed during handshake")

    def result(self) -> tuple[str, tuple[bytes, ...]]:
        """The negotiated version and the presented chain (after ``done``)."""
        return self._obj.version() or "unknown", unverified_chain(self._obj)


async def handshake_over_streams(
    ctx: ssl.SSLContext, sni: str | None, max_bytes: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[str, tuple[bytes, ...]]:
    """The handshake over a stream pair (a TCP connection or a tunnel): the version and the chain."""
    hs = Handshake(ctx, sni, max_bytes)
    try:
        out = hs.step()
        while not hs.done:
            if out:
                writer.write(out)
                await writer.drain()
            data = await reader.read(READ_SIZE)
            if not data:
                raise hs.closed()
            out = hs.feed(data)
    except (ConnectionResetError, BrokenPipeError):
        raise ProbeFailure("reset", "connection reset during handshake") from None
    except OSError as exc:
        raise ProbeFailure("reset", f"connection error: {exc.strerror or exc}") from None
    if out:  # our last flight (the client Finished), so the server sees a completed handshake
        try:
            writer.write(out)
            await writer.drain()
        except OSError:
            pass
    return hs.result()
