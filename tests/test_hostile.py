"""Hostile targets, each a real server on loopback, probed through the real notary HTTP server.

The notary runs as an aiohttp AppRunner/TCPSite on 127.0.0.1 with 1 s connect and
handshake timeouts; every hostile target must be answered with HTTP 200 and a
signed observation carrying the error status, within the timeout + 1 s (the one
timed assertion), and must not stop the notary serving a healthy target meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import secrets
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from notary.config import NotaryConfig
from notary.core import AddressPolicy, Observation, SigningKey, parse_networks, verify_answer
from notary.core.observation import MAX_CHAIN_BYTES, MAX_CHAIN_CERTS
from notary.prober import ProbeLimits
from notary.server import create_app
from tests.support.tls import leaf_spki, make_ca, server_context, tls_server

TIMEOUT = 1.0
BOUND = TIMEOUT + 1.0  # the issue's bound: answered within the configured timeout + 1 s
LIMITS = ProbeLimits(connect_timeout=TIMEOUT, handshake_timeout=TIMEOUT)


@dataclass
class Notary:
    url: str
    key: SigningKey
    session: aiohttp.ClientSession

    async def observe(self, port: int, host: str = "127.0.0.1") -> tuple[Observation, float]:
        """GET one observation; return it (verified) and the seconds the request took."""
        nonce = secrets.token_urlsafe(16)
        started = time.monotonic()
        async with self.session.get(f"{self.url}/v1/observe/{host}/{port}", params={"nonce": nonce}) as resp:
            body = await resp.json()
            elapsed = time.monotonic() - started
            assert resp.status == 200, body
        [result] = body["results"]
        assert result["target"] == {"host": host, "port": port, "sni": None}
        [obs] = verify_answer(result["envelopes"], result["freshness"], self.key.verify_key, nonce=nonce)
        assert obs.nonce == nonce
        assert obs.notary == self.key.key_id
        assert obs.source == "fresh"
        assert obs.target.port == port
        return obs, elapsed


@contextlib.asynccontextmanager
async def run_notary(data_dir: Path, limits: ProbeLimits = LIMITS) -> AsyncIterator[Notary]:
    key = SigningKey.generate()
    config = NotaryConfig(
        data_dir=data_dir,
        policy=AddressPolicy(parse_networks(["127.0.0.0/8"]), None),
        probe_limits=limits,
    )
    runner = web.AppRunner(create_app(config, key))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            yield Notary(f"http://{host}:{port}", key, session)
    finally:
        await runner.cleanup()


@pytest.fixture
async def notary(tmp_path: Path) -> AsyncIterator[Notary]:
    async with run_notary(tmp_path) as n:
        yield n


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Hostile:
    port: int
    accepted: asyncio.Event


@contextlib.asynccontextmanager
async def hostile_server(handler: Handler) -> AsyncIterator[Hostile]:
    """A real TCP server on 127.0.0.1 running ``handler`` on each connection (bounded to 10 s each)."""
    accepted = asyncio.Event()
    tasks: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(handler(reader, writer), 10)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield Hostile(server.sockets[0].getsockname()[1], accepted)
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def drain_until_eof(reader: asyncio.StreamReader) -> None:
    for _ in range(1000):  # bounded
        if not await reader.read(64 * 1024):
            return


# --- the hostile behaviours --------------------------------------------------------------


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and never speaks."""
    await drain_until_eof(reader)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers the ClientHello with something that is not TLS."""
    writer.write(b"SSH-2.0-OpenSSH_9.6 hostile\r\n" + os.urandom(64))
    await writer.drain()
    await drain_until_eof(reader)


async def tls_looking_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TLS handshake record header followed by junk: TLS, but broken."""
    await reader.read(64 * 1024)
    writer.write(b"\x16\x03\x03\x00\x40" + b"\xff" * 64)
    await writer.drain()
    await drain_until_eof(reader)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # close with SO_LINGER 0: the kernel sends RST


async def reset_on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _rst(writer)


async def reset_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(64 * 1024)
    _rst(writer)


async def slowloris(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Sends a TLS record one byte a second."""
    record = b"\x16\x03\x03\x00\x30" + b"\x02" * 0x30
    for i in range(10):  # bounded: ten bytes at most
        writer.write(record[i : i + 1])
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(64 * 1024), 1.0)
        except TimeoutError:
            continue
        if not data:
            return  # the prober hung up


@pytest.mark.parametrize(
    ("behaviour", "statuses"),
    [
        (silent, {"timeout"}),
        (garbage, {"not_tls"}),
        (tls_looking_garbage, {"tls_failed"}),
        (reset_on_accept, {"reset", "tls_failed"}),
        (reset_after_hello, {"reset", "tls_failed"}),
        (slowloris, {"timeout"}),
    ],
    ids=lambda v: getattr(v, "__name__", None) or "/".join(sorted(v)),
)
async def test_hostile_target_gets_a_signed_error(notary: Notary, behaviour: Handler, statuses: set[str]) -> None:
    async with hostile_server(behaviour) as target:
        obs, elapsed = await notary.observe(target.port)
        assert target.accepted.is_set()  # it really was probed
    assert obs.status in statuses, (obs.status, obs.detail)
    assert elapsed < BOUND, f"answered in {elapsed:.2f}s, bound {BOUND}s"
    assert obs.ip == "127.0.0.1"
    assert obs.detail
    assert obs.chain == () and obs.spki_sha256 is None and obs.leaf is None and obs.tls_version is None


# --- oversized chains (real TLS servers) -----------------------------------------------


def long_chain_leaf(n_intermediates: int) -> trustme.LeafCert:
    ca = trustme.CA(path_length=n_intermediates + 1)
    for _ in range(n_intermediates):
        ca = ca.create_child_ca()
    return ca.issue_cert("long.test")


def big_cert_context(tmp_path: Path, padding: int) -> tuple[ssl.SSLContext, int]:
    """A self-signed certificate made huge by a private, non-critical extension of ``padding`` bytes."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "big.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    blob = b"\x04\x83" + padding.to_bytes(3, "big") + b"A" * padding  # DER OCTET STRING
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("big.test")]), critical=False)
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), blob), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"big{padding}.pem", tmp_path / f"big{padding}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx, len(cert.public_bytes(serialization.Encoding.DER))


async def test_too_many_certificates_is_chain_too_large(notary: Notary) -> None:
    leaf = long_chain_leaf(MAX_CHAIN_CERTS + 1)
    assert len(leaf.cert_chain_pems) == MAX_CHAIN_CERTS + 2  # leaf + intermediates, all sent
    async with tls_server(server_context(leaf)) as srv:
        obs, elapsed = await notary.observe(srv.port)
    assert obs.status == "chain_too_large", obs.detail
    assert f"{MAX_CHAIN_CERTS + 2} certificates" in (obs.detail or "")
    assert obs.chain == () and obs.spki_sha256 is None
    assert elapsed < BOUND


async def test_chain_at_the_certificate_limit_is_ok(notary: Notary) -> None:
    leaf = long_chain_leaf(MAX_CHAIN_CERTS - 1)
    async with tls_server(server_context(leaf)) as srv:
        obs, _ = await notary.observe(srv.port)
    assert obs.status == "ok", obs.detail
    assert len(obs.chain) == MAX_CHAIN_CERTS
    assert obs.spki_sha256 == leaf_spki(leaf)


@pytest.mark.parametrize(
    "padding",
    [
        MAX_CHAIN_BYTES + 4096,  # handshake completes; the chain is over the byte cap
        LIMITS.max_handshake_bytes + 64 * 1024,  # the certificate message itself is over every cap
    ],
    ids=["over-chain-bytes", "over-handshake-bytes"],
)
async def test_huge_certificate_is_chain_too_large(notary: Notary, tmp_path: Path, padding: int) -> None:
    ctx, der_len = big_cert_context(tmp_path, padding)
    assert der_len > MAX_CHAIN_BYTES
    async with tls_server(ctx) as srv:
        obs, elapsed = await notary.observe(srv.port)
    assert obs.status == "chain_too_large", (obs.status, obs.detail)
    assert obs.chain == () and obs.spki_sha256 is None
    assert elapsed < BOUND


async def test_handshake_byte_cap_cuts_off_the_server(tmp_path: Path) -> None:
    # A notary configured with a small handshake cap: the prober's own byte count trips.
    limits = ProbeLimits(connect_timeout=TIMEOUT, handshake_timeout=TIMEOUT, max_handshake_bytes=8 * 1024)
    ctx, _ = big_cert_context(tmp_path, 32 * 1024)
    (tmp_path / "notary").mkdir()
    async with run_notary(tmp_path / "notary", limits) as notary, tls_server(ctx) as srv:
        obs, elapsed = await notary.observe(srv.port)
    assert obs.status == "chain_too_large", (obs.status, obs.detail)
    assert "8192 bytes" in (obs.detail or "")
    assert elapsed < BOUND


# --- concurrency -------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", [silent, slowloris], ids=lambda f: f.__name__)
async def test_healthy_target_is_served_while_a_hostile_probe_is_pending(notary: Notary, behaviour: Handler) -> None:
    leaf = make_ca().issue_cert("127.0.0.1")
    async with hostile_server(behaviour) as bad, tls_server(server_context(leaf)) as good:
        pending = asyncio.create_task(notary.observe(bad.port))
        await asyncio.wait_for(bad.accepted.wait(), 5)  # the hostile probe is now connected and stuck
        obs, _ = await notary.observe(good.port)
        assert not pending.done()  # still pending while the healthy one was answered
        bad_obs, elapsed = await pending
    assert obs.status == "ok", obs.detail
    assert obs.spki_sha256 == leaf_spki(leaf)
    assert bad_obs.status == "timeout"
    assert elapsed < BOUND


async def test_notary_stays_healthy_after_hostile_targets(notary: Notary) -> None:
    async with hostile_server(garbage) as g, hostile_server(reset_after_hello) as r:
        statuses = [(await notary.observe(p))[0].status for p in (g.port, r.port)]
    assert statuses[0] == "not_tls" and statuses[1] in ("reset", "tls_failed")
    async with notary.session.get(f"{notary.url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["key_id"] == notary.key.key_id
