"""The prober against real TLS servers on loopback (trustme certificates, real sockets, real OpenSSL).

Names such as ``a.test`` reach loopback through ``connect_override`` or through an
injected resolver: real DNS cannot be staged in a test (and must never leave
loopback), so the resolver is the one seam that is faked, and each test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import warnings
from dataclasses import dataclass
from typing import AsyncIterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from notary.core import AddressPolicy, Target, parse_networks, spki_sha256
from notary.prober import ProbeLimits, Prober
from client.devtools import port_of, serving
from tests.support.tls import leaf_spki, make_ca, server_context, tls_server

NOW = 1_700_000_123
LOOPBACK = AddressPolicy(parse_networks(["127.0.0.0/8"]), None)


def clock() -> int:
    return NOW


def der_chain(cert: trustme.LeafCert) -> tuple[bytes, ...]:
    return tuple(ssl.PEM_cert_to_DER_cert(p.bytes().decode("ascii")) for p in cert.cert_chain_pems)


def prober_for(host: str, port: int, **kw) -> Prober:
    """A loopback-allowing prober that sends ``host`` to 127.0.0.1 (curl --connect-to style)."""
    return Prober(LOOPBACK, clock=clock, connect_override={(host, port): ("127.0.0.1", port)}, **kw)


class FakeResolver:
    """A fake at the DNS seam (real DNS cannot be staged and must not leave loopback).

    Answers from a list of canned answers, one per call; records every call.
    """

    def __init__(self, *answers: list[str] | BaseException) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)


class HangingResolver:
    """A fake at the DNS seam: a resolver that never answers."""

    def __init__(self) -> None:
        self.calls = 0

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def refusing_connector(calls: list[tuple[str, int]]):
    """A connector that records and fails the test: used where no connection may happen."""

    async def connect(ip: str, port: int):
        calls.append((ip, port))
        pytest.fail(f"the prober connected to {ip}:{port} but should not have")

    return connect


@dataclass
class Served:
    host: str
    port: int
    hellos: int = 0  # ClientHellos the server processed
    handshakes: int = 0  # handshakes the server completed (serve_bio only)


@contextlib.asynccontextmanager
async def serve_tls(ctx: ssl.SSLContext, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Served]:
    """A real asyncio TLS server on ``host:port`` (port 0: ephemeral) that counts ClientHellos.

    (Completed handshakes cannot be counted server-side: the prober aborts as soon as
    it has the server's certificate, before a TLS 1.3 server sees the client Finished.)
    """
    holder: list[Served] = []
    inner = ctx.sni_callback

    def count(obj: ssl.SSLObject, name: str | None, c: ssl.SSLContext):
        holder[0].hellos += 1
        return inner(obj, name, c) if inner else None  # type: ignore[arg-type]  # typeshed says str; None without SNI

    ctx.sni_callback = count

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(handle, host, port, ssl=ctx, ssl_handshake_timeout=5)
    holder.append(Served(host, server.sockets[0].getsockname()[1]))
    try:
        yield holder[0]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


@contextlib.asynccontextmanager
async def serve_bio(ctx: ssl.SSLContext) -> AsyncIterator[Served]:
    """A real TLS server on 127.0.0.1 that drives OpenSSL over memory BIOs so that a
    failing handshake still sends its alert (asyncio's own TLS server drops it)."""
    holder: list[Served] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_side=True)
        try:
            for _ in range(20):  # bounded: a handshake is a few flights
                data = await reader.read(64 * 1024)
                if not data:
                    return
                incoming.write(data)
                done = True
                try:
                    obj.do_handshake()
                    holder[0].handshakes += 1
                except ssl.SSLWantReadError:
                    done = False
                except ssl.SSLError:
                    pass  # the alert is in `outgoing`
                writer.write(outgoing.read())
                await writer.drain()
                if done:
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()

    async with serving(handle) as server:
        holder.append(Served("127.0.0.1", port_of(server)))
        yield holder[0]


# --- key types and result fields ------------------------------------------------------


@pytest.mark.parametrize("key_type", ["rsa", "ecdsa"])
async def test_probe_records_leaf_key_and_fields(key_type: str) -> None:
    kt = trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA
    ca = make_ca(key_type)
    leaf = ca.issue_cert("a.test", "www.a.test", key_type=kt)
    async with serve_tls(server_context(leaf)) as srv:
        results = await prober_for("a.test", srv.port).probe(Target.parse("a.test", srv.port))
    assert len(results) == 1
    r = results[0]
    assert r.status == "ok", r.detail
    assert r.detail is None
    assert r.ip == "127.0.0.1"
    assert r.target == Target("a.test", srv.port, "a.test")
    assert r.observed_at == NOW
    assert r.spki_sha256 == leaf_spki(leaf)
    assert r.chain == der_chain(leaf)
    assert r.spki_sha256 == spki_sha256(r.chain[0])
    assert r.leaf is not None
    assert r.leaf.sans == ("DNS:a.test", "DNS:www.a.test")
    assert r.tls_version in ("TLSv1.2", "TLSv1.3")
    key = x509.load_der_x509_certificate(r.chain[0]).public_key()
    assert isinstance(key, rsa.RSAPublicKey if key_type == "rsa" else ec.EllipticCurvePublicKey)
    assert srv.hellos == 1


async def test_multi_certificate_chain_is_captured_leaf_first() -> None:
    root = make_ca()
    mid = root.create_child_ca()
    low = mid.create_child_ca()
    leaf = low.issue_cert("chain.test")
    sent = der_chain(leaf)
    assert len(sent) == 3  # leaf, low, mid: what the server sends (the root is not sent)
    async with serve_tls(server_context(leaf)) as srv:
        [r] = await prober_for("chain.test", srv.port).probe(Target.parse("chain.test", srv.port))
    assert r.status == "ok", r.detail
    assert r.chain == sent
    certs = [x509.load_der_x509_certificate(c) for c in r.chain]
    assert certs[0].subject != certs[1].subject
    for child, parent in zip(certs, certs[1:]):
        assert child.issuer == parent.subject  # leaf first, each signed by the next
    assert r.spki_sha256 == leaf_spki(leaf)


@pytest.mark.parametrize(
    ("min_v", "max_v", "expected"),
    [
        (ssl.TLSVersion.TLSv1_3, None, "TLSv1.3"),
        (None, ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
    ],
    ids=["tls13-only", "tls12-only"],
)
async def test_tls_version_is_recorded(min_v, max_v, expected: str) -> None:
    leaf = make_ca().issue_cert("v.test")
    ctx = server_context(leaf, min_version=min_v, max_version=max_v)
    async with serve_tls(ctx) as srv:
        [r] = await prober_for("v.test", srv.port).probe(Target.parse("v.test", srv.port))
    assert r.status == "ok", r.detail
    assert r.tls_version == expected
    assert r.spki_sha256 == leaf_spki(leaf)


async def test_sni_selects_the_certificate() -> None:
    ca = make_ca()
    leaf_a, leaf_b = ca.issue_cert("a.test"), ca.issue_cert("b.test")
    assert leaf_spki(leaf_a) != leaf_spki(leaf_b)
    ctx_a, ctx_b = server_context(leaf_a), server_context(leaf_b)
    seen: list[str | None] = []

    def switch(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen.append(name)
        if name == "b.test":
            obj.context = ctx_b

    ctx_a.sni_callback = switch
    async with serve_tls(ctx_a) as srv:
        override = {("a.test", srv.port): ("127.0.0.1", srv.port), ("b.test", srv.port): ("127.0.0.1", srv.port)}
        prober = Prober(LOOPBACK, clock=clock, connect_override=override)
        [ra] = await prober.probe(Target.parse("a.test", srv.port))
        [rb] = await prober.probe(Target.parse("b.test", srv.port))
        # Host a.test, but SNI b.test: the SNI decides.
        [rab] = await prober.probe(Target.parse("a.test", srv.port, sni="b.test"))
    assert seen == ["a.test", "b.test", "b.test"]
    assert (ra.status, rb.status, rab.status) == ("ok", "ok", "ok")
    assert ra.spki_sha256 == leaf_spki(leaf_a)
    assert rb.spki_sha256 == leaf_spki(leaf_b)
    assert rab.spki_sha256 == leaf_spki(leaf_b)
    assert rab.target.sni == "b.test"


async def test_underscore_host_is_probed_with_its_sni() -> None:
    """Issue 8, item 12: a name with ``_`` labels is a valid target, sent as SNI unchanged."""
    leaf = make_ca().issue_cert("cdn.test")  # trustme runs IDNA 2008 on SANs; the prober records any key
    ctx = server_context(leaf)
    seen: list[str | None] = []
    ctx.sni_callback = lambda _obj, name, _ctx: seen.append(name)
    async with serve_tls(ctx) as srv:
        [r] = await prober_for("_acme.cdn.test", srv.port).probe(Target.parse("_ACME.cdn.test", srv.port))
    assert r.status == "ok", r.detail
    assert seen == ["_acme.cdn.test"]
    assert r.target.sni == "_acme.cdn.test" and r.spki_sha256 == leaf_spki(leaf)


async def test_ip_literal_sends_no_sni() -> None:
    leaf = make_ca().issue_cert("127.0.0.1")
    ctx = server_context(leaf)
    seen: list[str | None] = []
    ctx.sni_callback = lambda _obj, name, _ctx: seen.append(name)
    async with serve_tls(ctx) as srv:
        target = Target.parse("127.0.0.1", srv.port)
        assert target.sni is None
        [r] = await Prober(LOOPBACK, clock=clock).probe(target)
    assert r.status == "ok", r.detail
    assert seen == [None]
    assert r.leaf is not None and r.leaf.sans == ("IP:127.0.0.1",)


async def test_old_tls_only_server_is_tls_failed() -> None:
    """A server that speaks only TLS 1.0/1.1: the prober offers 1.2 and 1.3 and must fail the handshake."""
    if not (ssl.HAS_TLSv1 or ssl.HAS_TLSv1_1):
        pytest.skip("this OpenSSL was built without TLS 1.0/1.1")
    ca = make_ca("rsa")
    leaf = ca.issue_cert("old.test", key_type=trustme.KeyType.RSA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            sctx = server_context(leaf, min_version=ssl.TLSVersion.TLSv1, max_version=ssl.TLSVersion.TLSv1_1)
            sctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            cctx.check_hostname = False
            cctx.verify_mode = ssl.CERT_NONE
            cctx.minimum_version = ssl.TLSVersion.TLSv1
            cctx.maximum_version = ssl.TLSVersion.TLSv1_1
            cctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        except (ssl.SSLError, ValueError) as exc:
            pytest.skip(f"OpenSSL refuses to configure TLS 1.0/1.1: {exc}")
    async with serve_bio(sctx) as srv:
        # First prove the server really completes a TLS 1.0/1.1 handshake with a client that allows it.
        try:
            _r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", srv.port, ssl=cctx, server_hostname="old.test"), 5
            )
        except (ssl.SSLError, OSError) as exc:
            pytest.skip(f"OpenSSL in this environment does not complete TLS 1.0/1.1 handshakes: {exc}")
        old_version = w.get_extra_info("ssl_object").version()
        w.transport.abort()
        assert old_version in ("TLSv1", "TLSv1.1")
        assert srv.handshakes == 1
        [r] = await prober_for("old.test", srv.port).probe(Target.parse("old.test", srv.port))
        assert srv.handshakes == 1  # the prober's handshake did not complete
    assert r.status == "tls_failed", (r.status, r.detail)
    assert r.chain == () and r.spki_sha256 is None and r.tls_version is None
    assert r.observed_at == NOW


# --- several addresses ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def two_servers(ctx1: ssl.SSLContext, ctx2: ssl.SSLContext) -> AsyncIterator[tuple[Served, Served]]:
    """Real TLS servers on 127.0.0.1 and 127.0.0.2 sharing one port (loopback aliases work on Linux)."""
    last: OSError | None = None
    for _ in range(10):  # bounded: retry if the port is taken on the second address
        async with serve_tls(ctx2, "127.0.0.2") as s2:
            try:
                cm = serve_tls(ctx1, "127.0.0.1", s2.port)
                s1 = await cm.__aenter__()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                last = exc
                continue
            try:
                yield s1, s2
            finally:
                await cm.__aexit__(None, None, None)
            return
    pytest.skip(f"could not bind one port on both 127.0.0.1 and 127.0.0.2: {last}")


async def test_all_addresses_probes_each_address() -> None:
    ca = make_ca()
    leaf1, leaf2 = ca.issue_cert("multi.test"), ca.issue_cert("multi.test")
    async with two_servers(server_context(leaf1), server_context(leaf2)) as (s1, s2):
        # The resolver is a fake at the DNS seam (see module docstring).
        resolver = FakeResolver(["127.0.0.1", "127.0.0.2"])
        prober = Prober(LOOPBACK, clock=clock, resolver=resolver)
        results = await prober.probe(Target.parse("multi.test", s1.port), all_addresses=True)
        assert resolver.calls == [("multi.test", s1.port)]
        assert (s1.hellos, s2.hellos) == (1, 1)
        first = await prober.probe(Target.parse("multi.test", s1.port))
        assert (s1.hellos, s2.hellos) == (2, 1)  # without all_addresses: the first address only
    assert [r.ip for r in results] == ["127.0.0.1", "127.0.0.2"]
    assert [r.status for r in results] == ["ok", "ok"]
    assert [r.spki_sha256 for r in results] == [leaf_spki(leaf1), leaf_spki(leaf2)]
    assert all(r.observed_at == NOW for r in results)
    assert [r.ip for r in first] == ["127.0.0.1"]


async def test_all_addresses_reports_each_failure_separately() -> None:
    leaf = make_ca().issue_cert("half.test")
    with socket.socket() as closed:
        async with serve_tls(server_context(leaf), "127.0.0.1") as srv:
            try:
                closed.bind(("127.0.0.2", srv.port))  # bound, not listening: connections are refused
            except OSError as exc:
                pytest.skip(f"cannot bind 127.0.0.2:{srv.port}: {exc}")
            resolver = FakeResolver(["127.0.0.1", "127.0.0.2"])  # fake at the DNS seam
            results = await Prober(LOOPBACK, clock=clock, resolver=resolver).probe(
                Target.parse("half.test", srv.port), all_addresses=True
            )
    assert [(r.ip, r.status) for r in results] == [("127.0.0.1", "ok"), ("127.0.0.2", "refused")]


# --- network failures are results, not exceptions -------------------------------------


async def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound but not listening: the kernel answers RST
        port = s.getsockname()[1]
        [r] = await Prober(LOOPBACK, clock=clock).probe(Target.parse("127.0.0.1", port))
    assert r.status == "refused"
    assert r.ip == "127.0.0.1"
    assert r.chain == () and r.spki_sha256 is None and r.leaf is None
    assert r.observed_at == NOW


@pytest.mark.parametrize(
    "answer",
    [socket.gaierror(socket.EAI_NONAME, "Name or service not known"), OSError("resolver broke"), []],
    ids=["gaierror", "oserror", "empty"],
)
async def test_dns_failure(answer) -> None:
    resolver = FakeResolver(answer)  # fake at the DNS seam
    connects: list[tuple[str, int]] = []
    prober = Prober(LOOPBACK, clock=clock, resolver=resolver, connector=refusing_connector(connects))
    [r] = await prober.probe(Target.parse("nowhere.test", 443))
    assert r.status == "dns_failed"
    assert r.ip is None
    assert r.detail
    assert r.observed_at == NOW
    assert resolver.calls == [("nowhere.test", 443)]
    assert connects == []


async def test_resolver_timeout_is_busy_not_a_fact_about_the_target() -> None:
    resolver = HangingResolver()  # fake at the DNS seam: never answers
    connects: list[tuple[str, int]] = []
    prober = Prober(
        LOOPBACK, clock=clock, resolver=resolver, limits=ProbeLimits(resolve_timeout=0.2),
        connector=refusing_connector(connects),
    )
    [r] = await prober.probe(Target.parse("slow.test", 443))
    assert r.status == "busy"  # the notary's lookup was too slow: never stored (review 2, finding 2)
    assert "resolution timed out" in (r.detail or "")
    assert resolver.calls == 1
    assert connects == []


async def test_ip_literal_is_not_resolved() -> None:
    resolver = FakeResolver(OSError("must not be called"))
    leaf = make_ca().issue_cert("x.test")
    async with tls_server(server_context(leaf)) as srv:
        [r] = await Prober(LOOPBACK, clock=clock, resolver=resolver).probe(Target.parse("127.0.0.1", srv.port))
    assert r.status == "ok"
    assert resolver.calls == []


async def test_prober_is_reusable_and_concurrent() -> None:
    leaf = make_ca().issue_cert("c.test")
    async with serve_tls(server_context(leaf)) as srv:
        prober = prober_for("c.test", srv.port)
        results = await asyncio.gather(*(prober.probe(Target.parse("c.test", srv.port)) for _ in range(5)))
        assert srv.hellos == 5
    assert {r.spki_sha256 for [r] in results} == {leaf_spki(leaf)}
