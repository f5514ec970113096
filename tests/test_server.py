"""The notary HTTP API against a real aiohttp server on loopback and real TLS targets.

Every notary here is a real ``web.AppRunner`` + ``TCPSite`` on 127.0.0.1:0 with a
real SQLite file in ``tmp_path``; every target is a real TLS server on loopback
(trustme certificates).  Targets that need their handshakes counted are capped
at TLS 1.2: the prober stops as soon as it holds the chain, so with TLS 1.3 the
server never sees the client's Finished and never completes its side.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from notary.config import NotaryConfig
from notary.core import (
    AddressPolicy,
    SigningKey,
    Target,
    parse_networks,
    verify_identity,
    open_answer,
)
from notary.errors import VerificationError
from notary.server import SERVICE, STORE, create_app
from notary.service import ServiceLimits
from tests.support.tls import leaf_spki, make_ca, server_context, tls_server

LOOPBACK = AddressPolicy(parse_networks(["127.0.0.0/8"]), None)
T0 = 1_700_000_000


def nonce(i: int | str = 0) -> str:
    return f"test-nonce-{i}".ljust(24, "x")


class Clock:
    """A settable integer clock (unix seconds) for the notary under test."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Notary:
    """A running notary app plus a client session that records every response body."""

    def __init__(self, app: web.Application, key: SigningKey, base: str, session: aiohttp.ClientSession) -> None:
        self.app = app
        self.key = key
        self.base = base
        self.session = session
        self.bodies: list[bytes] = []

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        async with self.session.request(method, self.base + path, **kw) as r:
            body = await r.read()
            self.bodies.append(body)
            return r.status, dict(r.headers), body

    async def get_json(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, _, body = await self.request("GET", path, **kw)
        return status, json.loads(body)

    async def observe(self, targets: list[dict[str, Any]], n: str, **extra: Any) -> dict[str, Any]:
        status, headers, body = await self.request("POST", "/v1/observe", json={"targets": targets, "nonce": n, **extra})
        assert status == 200, body
        assert headers["Content-Type"].startswith("application/json")
        return json.loads(body)

    def verify(self, result: dict[str, Any]):  # -> Observation
        """The first observation of one result, after checking the whole answer (signatures, Merkle path)."""
        return open_answer(result["envelopes"], result.get("freshness"), self.key.verify_key)[0]


NotaryFactory = Callable[..., Awaitable[Notary]]


@pytest.fixture
async def make_notary(tmp_path: Path) -> AsyncIterator[NotaryFactory]:
    runners: list[web.AppRunner] = []
    notaries: list[Notary] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def make(*, key: SigningKey | None = None, clock: Callable[[], int] | None = None,
                   middleware: Any = None, **cfg: Any) -> Notary:
        key = key or SigningKey.generate()
        data = tmp_path / f"notary{len(runners)}"
        data.mkdir()
        cfg.setdefault("policy", LOOPBACK)
        cfg.setdefault("rate_per_client", 1000.0)
        cfg.setdefault("burst_per_client", 1000)
        kw: dict[str, Any] = {"clock": clock} if clock else {}
        app = create_app(NotaryConfig(data_dir=data, **cfg), key, **kw)
        if middleware is not None:
            app.middlewares.insert(0, middleware)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        n = Notary(app, key, f"http://127.0.0.1:{port}", session)
        notaries.append(n)
        return n

    try:
        yield make
    finally:
        await session.close()
        for r in runners:
            await r.cleanup()
    # Whatever the test did, no response ever carried a private key or a traceback.
    for n in notaries:
        seed = base64.b64encode(n.key.seed())
        for body in n.bodies:
            assert seed not in body
            assert n.key.seed().hex().encode() not in body
            assert b"Traceback" not in body


@pytest.fixture(scope="module")
def ca():
    return make_ca()


@pytest.fixture(scope="module")
def cert(ca):
    return ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture(scope="module")
def cert2(ca):
    return ca.issue_cert("localhost", "127.0.0.1")


def tls12(cert) -> ssl.SSLContext:
    return server_context(cert, max_version=ssl.TLSVersion.TLSv1_2)


async def settle(srv, expected: int, timeout: float = 5.0) -> None:
    """Wait (bounded) until ``srv`` has counted ``expected`` handshakes; the server side may lag the probe."""
    deadline = time.monotonic() + timeout
    while srv.handshakes < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


class Relay:
    """A TCP relay on 127.0.0.1: forwards each connection to ``backend_port``.

    Connections wait for ``gate`` before being forwarded; ``backend_port`` can be
    switched between connections (a target that changes its key).
    """

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.gate = asyncio.Event()
        self.gate.set()
        self.connections = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> "Relay":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            async with asyncio.timeout(10):
                await self.gate.wait()
                br, bw = await asyncio.open_connection("127.0.0.1", self.backend_port)
                await asyncio.gather(self._pipe(r, bw), self._pipe(br, w), return_exceptions=True)
        except (OSError, TimeoutError):
            pass
        finally:
            w.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()


# -- identity --------------------------------------------------------------------------------------

async def test_identity_document_verifies_and_describes_the_notary(make_notary: NotaryFactory) -> None:
    n = await make_notary(name="nyc-1", region="us-east", url="http://127.0.0.1:1", country="US",
                          max_targets=7, service_limits=ServiceLimits(ttl=123))
    status, env = await n.get_json("/v1/notary")
    assert status == 200
    ident = verify_identity(env, n.key.verify_key)
    assert ident.name == "nyc-1"
    assert ident.region == "us-east"
    assert ident.country == "US"
    assert ident.url == "http://127.0.0.1:1"
    assert ident.key_id == n.key.key_id
    assert ident.public_key == n.key.verify_key.b64
    assert ident.protocol == "parallax/2"
    assert ident.limits["max_targets"] == 7
    assert ident.limits["ttl_seconds"] == 123
    assert ident.limits["burst_per_client"] == 1000
    assert all(isinstance(v, int) for v in ident.limits.values())

    # Another key does not verify it.
    with pytest.raises(VerificationError):
        verify_identity(env, SigningKey.generate().verify_key)
    # A tampered payload does not verify.
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["region"] = "eu-west"
    tampered = dict(env, payload=base64.b64encode(json.dumps(payload).encode()).decode())
    with pytest.raises(VerificationError):
        verify_identity(tampered, n.key.verify_key)
    # A tampered signature does not verify.
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    bad_sig = dict(env, signatures=[{"keyid": env["signatures"][0]["keyid"], "sig": base64.b64encode(bytes(sig)).decode()}])
    with pytest.raises(VerificationError):
        verify_identity(bad_sig, n.key.verify_key)


# -- observe ---------------------------------------------------------------------------------------

async def test_observe_several_targets_in_order_with_verified_envelopes(make_notary: NotaryFactory, cert, cert2) -> None:
    n = await make_notary()
    async with tls_server(server_context(cert)) as a, tls_server(server_context(cert2)) as b:
        targets = [
            {"host": "127.0.0.1", "port": b.port},
            {"host": "127.0.0.1", "port": a.port, "sni": "localhost"},
            {"host": "127.0.0.1", "port": a.port},
        ]
        body = await n.observe(targets, nonce("multi"))
    results = body["results"]
    assert [r["target"] for r in results] == [
        {"host": "127.0.0.1", "port": b.port, "sni": None},
        {"host": "127.0.0.1", "port": a.port, "sni": "localhost"},
        {"host": "127.0.0.1", "port": a.port, "sni": None},
    ]
    expected_spki = [leaf_spki(cert2), leaf_spki(cert), leaf_spki(cert)]
    for result, spki in zip(results, expected_spki):
        assert len(result["envelopes"]) == 1
        obs = n.verify(result)
        assert obs.notary == n.key.key_id
        assert obs.nonce == nonce("multi")
        assert obs.target.to_json() == result["target"]
        assert obs.ip == "127.0.0.1"
        assert obs.status == "ok"
        assert obs.spki_sha256 == spki
        assert obs.source == "fresh"
        assert obs.age >= 0
        assert [k.spki_sha256 for k in obs.key_history] == [spki]


async def test_hostname_target_with_connect_override(make_notary: NotaryFactory, cert) -> None:
    async with tls_server(server_context(cert)) as srv:
        override = {("notary-test.example", 443): ("127.0.0.1", srv.port)}
        n = await make_notary(connect_override=override)
        body = await n.observe([{"host": "Notary-Test.Example."}], nonce("h"))
        # The same name, refused by an address policy without the loopback opt-in.
        guarded = await make_notary(connect_override=override, policy=AddressPolicy((), None))
        gbody = await guarded.observe([{"host": "notary-test.example", "port": 443}], nonce("h2"))
    (result,) = body["results"]
    assert result["target"] == {"host": "notary-test.example", "port": 443, "sni": "notary-test.example"}
    obs = n.verify(result)
    assert (obs.status, obs.ip, obs.target.sni) == ("ok", "127.0.0.1", "notary-test.example")
    assert obs.spki_sha256 == leaf_spki(cert)
    blocked = guarded.verify(gbody["results"][0])
    assert blocked.status == "blocked_by_policy"


async def test_cached_result_is_resigned_with_the_new_nonce(make_notary: NotaryFactory, cert) -> None:
    clock = Clock()
    n = await make_notary(clock=clock, service_limits=ServiceLimits(ttl=300))
    async with tls_server(tls12(cert)) as srv:
        t = [{"host": "127.0.0.1", "port": srv.port}]
        first = n.verify((await n.observe(t, nonce(1)))["results"][0])
        await settle(srv, 1)
        assert srv.handshakes == 1
        assert (first.source, first.nonce, first.observed_at, first.age) == ("fresh", nonce(1), T0, 0)

        clock.now += 7
        second = n.verify((await n.observe(t, nonce(2)))["results"][0])
        assert second.source == "cached"
        assert second.nonce == nonce(2)
        assert second.observed_at == T0
        assert second.signed_at == T0 + 7
        assert second.age == 7
        assert second.spki_sha256 == first.spki_sha256 == leaf_spki(cert)
        # The GET form is served from the same cache.
        status, got = await n.get_json(f"/v1/observe/127.0.0.1/{srv.port}?nonce={nonce(3)}")
        assert status == 200
        third = n.verify(got["results"][0])
        assert (third.source, third.nonce, third.age) == ("cached", nonce(3), 7)
        await asyncio.sleep(0.1)
        assert srv.handshakes == 1  # no new handshake for cached answers

        # A max_age below the cached age forces a fresh probe ...
        fresh = n.verify((await n.observe(t, nonce(4), max_age=5))["results"][0])
        assert (fresh.source, fresh.observed_at, fresh.age) == ("fresh", T0 + 7, 0)
        await settle(srv, 2)
        assert srv.handshakes == 2
        # ... and so does max_age=0, even for a result observed this very second.
        zero = n.verify((await n.observe(t, nonce(5), max_age=0))["results"][0])
        assert zero.source == "fresh"
        await settle(srv, 3)
        assert srv.handshakes == 3

        # Past the notary's TTL the cache is not used even without max_age.
        clock.now += 301
        late = n.verify((await n.observe(t, nonce(6)))["results"][0])
        assert (late.source, late.observed_at) == ("fresh", clock.now)
        # A large max_age cannot stretch the notary's TTL either.
        clock.now += 301
        capped = n.verify((await n.observe(t, nonce(7), max_age=86400))["results"][0])
        assert capped.source == "fresh"
        await settle(srv, 5)
        assert srv.handshakes == 5


async def test_key_history_records_first_and_last_sighting_of_each_key(make_notary: NotaryFactory, cert, cert2) -> None:
    clock = Clock()
    n = await make_notary(clock=clock)
    async with tls_server(server_context(cert)) as a, tls_server(server_context(cert2)) as b, Relay(a.port) as relay:
        t = [{"host": "127.0.0.1", "port": relay.port}]
        one = n.verify((await n.observe(t, nonce(1), max_age=0))["results"][0])
        assert [k.to_json() for k in one.key_history] == [
            {"spki_sha256": leaf_spki(cert), "first_seen": T0, "last_seen": T0}]
        clock.now = T0 + 5
        n.verify((await n.observe(t, nonce(2), max_age=0))["results"][0])
        relay.backend_port = b.port  # the target now presents another key
        clock.now = T0 + 10
        three = n.verify((await n.observe(t, nonce(3), max_age=0))["results"][0])
    assert three.spki_sha256 == leaf_spki(cert2)
    assert three.source == "fresh"
    assert [k.to_json() for k in three.key_history] == [
        {"spki_sha256": leaf_spki(cert2), "first_seen": T0 + 10, "last_seen": T0 + 10},
        {"spki_sha256": leaf_spki(cert), "first_seen": T0, "last_seen": T0 + 5},
    ]


async def test_concurrent_requests_share_one_inflight_probe(make_notary: NotaryFactory, cert) -> None:
    entered = 0

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal entered
        if request.path == "/v1/observe":
            entered += 1
        return await handler(request)

    n = await make_notary(middleware=count)
    async with tls_server(tls12(cert)) as srv, Relay(srv.port) as relay:
        relay.gate.clear()  # hold the probe until every request is being handled
        t = [{"host": "127.0.0.1", "port": relay.port}]
        tasks = [asyncio.create_task(n.observe(t, nonce(f"c{i}"), max_age=0)) for i in range(10)]
        deadline = time.monotonic() + 10
        while entered < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert entered == 10
        await asyncio.sleep(0.2)  # let every handler reach the service
        relay.gate.set()
        bodies = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        await settle(srv, 1)
        await asyncio.sleep(0.1)
        assert relay.connections == 1
        assert srv.handshakes == 1
    observations = [n.verify(b["results"][0]) for b in bodies]
    assert [o.nonce for o in observations] == [nonce(f"c{i}") for i in range(10)]
    assert {o.source for o in observations} == {"fresh"}
    assert len({(o.observed_at, o.spki_sha256) for o in observations}) == 1
    assert await n.app[STORE].count() == 1
    assert n.app[SERVICE].probes == 1


async def test_get_observe_and_blocked_target_is_a_signed_observation(make_notary: NotaryFactory, cert) -> None:
    open_notary = await make_notary()
    guarded = await make_notary(policy=AddressPolicy())  # the default: loopback refused, port 443 only
    no_loopback = await make_notary(policy=AddressPolicy((), None))  # any port, no internal networks
    async with tls_server(tls12(cert)) as srv:
        status, body = await open_notary.get_json(f"/v1/observe/127.0.0.1/{srv.port}?nonce={nonce('g')}&sni=localhost")
        assert status == 200
        obs = open_notary.verify(body["results"][0])
        assert (obs.status, obs.nonce, obs.target.sni, obs.ip) == ("ok", nonce("g"), "localhost", "127.0.0.1")
        assert obs.spki_sha256 == leaf_spki(cert)
        await settle(srv, 1)

        for n, port, why in ((guarded, 443, "loopback"), (guarded, srv.port, "allowlist"), (no_loopback, srv.port, "loopback")):
            status, body = await n.get_json(f"/v1/observe/127.0.0.1/{port}?nonce={nonce('b')}")
            assert status == 200, body
            blocked = n.verify(body["results"][0])
            assert blocked.status == "blocked_by_policy"
            assert why in (blocked.detail or "")
            assert blocked.nonce == nonce("b")
            assert blocked.spki_sha256 is None and blocked.chain == ()
            assert blocked.key_history == ()
            # The POST form gives the same answer.
            pbody = await n.observe([{"host": "127.0.0.1", "port": port}], nonce("p"))
            assert n.verify(pbody["results"][0]).status == "blocked_by_policy"
        await asyncio.sleep(0.1)
        assert srv.handshakes == 1  # the blocked notaries never connected


# -- bad input -------------------------------------------------------------------------------------

BAD_POSTS: list[tuple[str, bytes, str]] = [
    ("bad hostname", json.dumps({"targets": [{"host": "bad..host", "port": 443}], "nonce": nonce()}).encode(), "bad_host"),
    ("hostname with space", json.dumps({"targets": [{"host": "exa mple.com"}], "nonce": nonce()}).encode(), "bad_host"),
    ("host not a string", json.dumps({"targets": [{"host": 7}], "nonce": nonce()}).encode(), "bad_host"),
    ("port 0", json.dumps({"targets": [{"host": "127.0.0.1", "port": 0}], "nonce": nonce()}).encode(), "bad_port"),
    ("port 65536", json.dumps({"targets": [{"host": "127.0.0.1", "port": 65536}], "nonce": nonce()}).encode(), "bad_port"),
    ("port negative", json.dumps({"targets": [{"host": "127.0.0.1", "port": -1}], "nonce": nonce()}).encode(), "bad_port"),
    ("port not integer", json.dumps({"targets": [{"host": "127.0.0.1", "port": "https"}], "nonce": nonce()}).encode(), "bad_port"),
    ("port bool", json.dumps({"targets": [{"host": "127.0.0.1", "port": True}], "nonce": nonce()}).encode(), "bad_port"),
    ("port superscript digit", json.dumps({"targets": [{"host": "127.0.0.1", "port": "\u00b2"}], "nonce": nonce()}).encode(), "bad_port"),
    ("port float", b'{"targets": [{"host": "127.0.0.1", "port": 443.0}], "nonce": "%s"}' % nonce().encode(), "bad_json"),
    ("too many targets", json.dumps({"targets": [{"host": "127.0.0.1", "port": 443}] * 17, "nonce": nonce()}).encode(), "too_many_targets"),
    ("no targets", json.dumps({"targets": [], "nonce": nonce()}).encode(), "bad_targets"),
    ("targets not a list", json.dumps({"targets": {"host": "a.example"}, "nonce": nonce()}).encode(), "bad_targets"),
    ("target not an object", json.dumps({"targets": ["a.example"], "nonce": nonce()}).encode(), "bad_targets"),
    ("unknown target field", json.dumps({"targets": [{"host": "a.example", "ip": "1.2.3.4"}], "nonce": nonce()}).encode(), "bad_targets"),
    ("missing nonce", json.dumps({"targets": [{"host": "a.example"}]}).encode(), "bad_nonce"),
    ("short nonce", json.dumps({"targets": [{"host": "a.example"}], "nonce": "a" * 15}).encode(), "bad_nonce"),
    ("long nonce", json.dumps({"targets": [{"host": "a.example"}], "nonce": "a" * 129}).encode(), "bad_nonce"),
    ("bad-char nonce", json.dumps({"targets": [{"host": "a.example"}], "nonce": "a" * 16 + "!"}).encode(), "bad_nonce"),
    ("nonce not a string", json.dumps({"targets": [{"host": "a.example"}], "nonce": 1234567890123456}).encode(), "bad_nonce"),
    ("malformed JSON", b'{"targets": [', "bad_json"),
    ("empty body", b"", "bad_json"),
    ("not UTF-8", b'{"nonce": "\xff\xfe"}', "bad_json"),
    ("JSON array body", b"[]", "bad_json"),
    ("JSON string body", b'"hello"', "bad_json"),
    ("unknown field", json.dumps({"targets": [{"host": "a.example"}], "nonce": nonce(), "debug": True}).encode(), "bad_json"),
    ("float max_age", b'{"targets": [{"host": "a.example"}], "nonce": "%s", "max_age": 1.5}' % nonce().encode(), "bad_json"),
    ("NaN", b'{"targets": [{"host": "a.example"}], "nonce": "%s", "max_age": NaN}' % nonce().encode(), "bad_json"),
    ("huge integer", b'{"targets": [{"host": "a.example"}], "nonce": "%s", "max_age": 18446744073709551616}' % nonce().encode(), "bad_json"),
    ("duplicate keys", b'{"targets": [{"host": "a.example"}], "nonce": "%s", "nonce": "%s"}' % (nonce(1).encode(), nonce(2).encode()), "bad_json"),
    ("negative max_age", json.dumps({"targets": [{"host": "a.example"}], "nonce": nonce(), "max_age": -1}).encode(), "bad_max_age"),
    ("string max_age", json.dumps({"targets": [{"host": "a.example"}], "nonce": nonce(), "max_age": "soon"}).encode(), "bad_max_age"),
    ("bool max_age", json.dumps({"targets": [{"host": "a.example"}], "nonce": nonce(), "max_age": True}).encode(), "bad_max_age"),
    ("max_age over a year", json.dumps({"targets": [{"host": "a.example"}], "nonce": nonce(), "max_age": 10**9}).encode(), "bad_max_age"),
    ("bad all_addresses", json.dumps({"targets": [{"host": "a.example"}], "nonce": nonce(), "all_addresses": "yes"}).encode(), "bad_all_addresses"),
]

BAD_GETS: list[tuple[str, str, str]] = [
    ("bad hostname", f"/v1/observe/bad..host/443?nonce={nonce()}", "bad_host"),
    ("port out of range", f"/v1/observe/127.0.0.1/70000?nonce={nonce()}", "bad_port"),
    ("port zero", f"/v1/observe/127.0.0.1/0?nonce={nonce()}", "bad_port"),
    ("port not integer", f"/v1/observe/127.0.0.1/https?nonce={nonce()}", "bad_port"),
    ("port superscript digit", f"/v1/observe/127.0.0.1/%C2%B2?nonce={nonce()}", "bad_port"),
    ("missing nonce", "/v1/observe/127.0.0.1/443", "bad_nonce"),
    ("short nonce", "/v1/observe/127.0.0.1/443?nonce=abc", "bad_nonce"),
    ("bad-char nonce", f"/v1/observe/127.0.0.1/443?nonce={'a' * 16}%2A", "bad_nonce"),
    ("negative max_age", f"/v1/observe/127.0.0.1/443?nonce={nonce()}&max_age=-1", "bad_max_age"),
    ("word max_age", f"/v1/observe/127.0.0.1/443?nonce={nonce()}&max_age=soon", "bad_max_age"),
    ("superscript max_age", f"/v1/observe/127.0.0.1/443?nonce={nonce()}&max_age=%C2%B2", "bad_max_age"),
    ("bad sni", f"/v1/observe/127.0.0.1/443?nonce={nonce()}&sni=a..b", "bad_host"),
    ("IP sni", f"/v1/observe/127.0.0.1/443?nonce={nonce()}&sni=10.0.0.1", "bad_sni"),
    ("bad all_addresses", f"/v1/observe/127.0.0.1/443?nonce={nonce()}&all_addresses=maybe", "bad_all_addresses"),
]


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected_status: int, code: str | None = None) -> dict[str, Any]:
    assert status == expected_status, body
    assert headers["Content-Type"].startswith("application/json"), headers
    doc = json.loads(body)
    assert set(doc) == {"error", "reason"}
    assert isinstance(doc["error"], str) and doc["error"]
    assert isinstance(doc["reason"], str) and doc["reason"]
    if code is not None:
        assert doc["error"] == code, doc
    assert b"Traceback" not in body and b'File "' not in body
    return doc


async def test_bad_input_is_a_json_400_and_the_server_keeps_serving(make_notary: NotaryFactory, cert) -> None:
    n = await make_notary()
    for name, raw, code in BAD_POSTS:
        status, headers, body = await n.request(
            "POST", "/v1/observe", data=raw, headers={"Content-Type": "application/json"})
        assert status == 400, (name, body)
        assert_json_error(status, headers, body, 400, code)
    for name, path, code in BAD_GETS:
        status, headers, body = await n.request("GET", path)
        assert status == 400, (name, body)
        assert_json_error(status, headers, body, 400, code)

    # No bad request probed anything or reached the store.
    assert n.app[SERVICE].probes == 0
    assert await n.app[STORE].count() == 0

    # Body too large: announced by Content-Length, and streamed chunked without one.
    big = b'{"nonce": "' + b"a" * (70 * 1024) + b'"}'
    assert_json_error(*await n.request("POST", "/v1/observe", data=big), 413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b" " * 1024

    assert_json_error(*await n.request("POST", "/v1/observe", data=chunks()), 413, "body_too_large")

    # Wrong method, unknown path.
    status, headers, body = await n.request("GET", "/v1/observe")
    assert_json_error(status, headers, body, 405)
    assert headers.get("Allow") == "POST"
    status, headers, body = await n.request("POST", "/v1/notary", data=b"{}")
    assert_json_error(status, headers, body, 405)
    assert "GET" in headers.get("Allow", "")
    assert_json_error(*await n.request("GET", "/v2/nothing-here"), 404)
    assert_json_error(*await n.request("GET", "/v1/observe/127.0.0.1"), 404)

    # Still serving: a good request succeeds.
    async with tls_server(server_context(cert)) as srv:
        doc = await n.observe([{"host": "127.0.0.1", "port": srv.port}], nonce("after"))
    obs = n.verify(doc["results"][0])
    assert obs.status == "ok" and obs.nonce == nonce("after")
    status, health = await n.get_json("/healthz")
    assert status == 200 and health["status"] == "ok"


async def test_max_targets_and_body_limit_follow_the_config(make_notary: NotaryFactory) -> None:
    n = await make_notary(max_targets=2, max_body_bytes=512)
    three = json.dumps({"targets": [{"host": "a.example"}] * 3, "nonce": nonce()}).encode()
    assert_json_error(*await n.request("POST", "/v1/observe", data=three), 400, "too_many_targets")
    assert_json_error(*await n.request("POST", "/v1/observe", data=b" " * 600 + b"{}"), 413, "body_too_large")


async def test_rate_limit_answers_429_with_retry_after(make_notary: NotaryFactory) -> None:
    n = await make_notary(rate_per_client=1.0, burst_per_client=2)
    for _ in range(2):
        status, _, body = await n.request("GET", "/v1/notary")
        assert status == 200, body
    status, headers, body = await n.request("GET", "/v1/notary")
    assert_json_error(status, headers, body, 429, "too_many_requests")
    retry = headers.get("Retry-After")
    assert retry is not None and retry.isdigit() and int(retry) >= 1
    # Observe requests draw from the same bucket, one token per target.
    status, headers, body = await n.request(
        "POST", "/v1/observe", json={"targets": [{"host": "127.0.0.1", "port": 1}], "nonce": nonce()})
    assert_json_error(status, headers, body, 429)
    assert int(headers["Retry-After"]) >= 1
    # /healthz is never rate limited.
    status, _, _ = await n.request("GET", "/healthz")
    assert status == 200


async def test_a_request_for_more_targets_than_the_burst_is_refused_then_recovers(make_notary: NotaryFactory, cert) -> None:
    n = await make_notary(rate_per_client=1.0, burst_per_client=2)
    async with tls_server(server_context(cert)) as srv:
        t = {"host": "127.0.0.1", "port": srv.port}
        body = await n.observe([t, t], nonce("burst"))
        assert len(body["results"]) == 2
        status, headers, raw = await n.request("POST", "/v1/observe", json={"targets": [t], "nonce": nonce()})
        assert_json_error(status, headers, raw, 429)
        wait = int(headers["Retry-After"])
        assert 1 <= wait <= 2
        await asyncio.sleep(wait + 0.1)
        body = await n.observe([t], nonce("later"))
        assert n.verify(body["results"][0]).nonce == nonce("later")


# -- health, metrics, openapi ----------------------------------------------------------------------

async def test_healthz_metrics_and_openapi(make_notary: NotaryFactory, cert) -> None:
    n = await make_notary(max_targets=9)
    status, health = await n.get_json("/healthz")
    assert status == 200
    assert health == {"status": "ok", "key_id": n.key.key_id}

    async with tls_server(server_context(cert)) as srv:
        await n.observe([{"host": "127.0.0.1", "port": srv.port}], nonce("m"))
    await n.request("GET", "/nothing")

    status, headers, body = await n.request("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert "parallax_probes_total" in text
    assert "parallax_http_requests_total" in text
    assert 'parallax_probes_total{status="ok"} 1.0' in text
    assert 'parallax_http_requests_total{code="200",route="/v1/observe"} 1.0' in text
    assert 'code="404"' in text
    # One answer, so one leaf under one signed freshness statement so far.
    assert 'parallax_freshness_signed{kind="leaves"} 1.0' in text
    assert 'parallax_freshness_signed{kind="statements"} 1.0' in text
    assert "parallax_rate_limit_overflowed 0.0" in text  # no key flood

    status, headers, body = await n.request("GET", "/v1/openapi.json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["openapi"] == "3.1.0"
    assert "/v1/observe" in doc["paths"] and "post" in doc["paths"]["/v1/observe"]
    assert "/v1/observe/{host}/{port}" in doc["paths"]
    schema = doc["paths"]["/v1/observe"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["targets"]["maxItems"] == 9


# -- watch list ------------------------------------------------------------------------------------

async def test_watch_list_is_rescanned_without_client_requests(make_notary: NotaryFactory, cert) -> None:
    async with tls_server(tls12(cert)) as srv:
        watched = Target.parse("127.0.0.1", srv.port)
        n = await make_notary(watch=(watched,), rescan_interval=1)
        store = n.app[STORE]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and await store.count() < 2:
            await asyncio.sleep(0.05)
        assert await store.count() >= 2  # at least two rounds: it re-scans, not just once
        latest = await store.latest(watched, all_addresses=True)
        assert [r.status for r in latest] == ["ok"]
        assert latest[0].spki_sha256 == leaf_spki(cert)
        history = await store.key_history(Target.parse("127.0.0.1", srv.port))
        assert [h.spki_sha256 for h in history] == [leaf_spki(cert)]
        await settle(srv, 2)
        assert srv.handshakes >= 2
        # No client request was involved; a client asking now gets the watched result from cache.
        assert not any(b for b in n.bodies)
        status, body = await n.get_json(f"/v1/observe/127.0.0.1/{srv.port}?nonce={nonce('w')}&all_addresses=1")
        assert status == 200
        obs = n.verify(body["results"][0])
        assert obs.source == "cached" and obs.spki_sha256 == leaf_spki(cert)


# -- secrets ---------------------------------------------------------------------------------------

async def test_private_key_never_served(make_notary: NotaryFactory, cert) -> None:
    key = SigningKey.generate()
    n = await make_notary(key=key)
    seed_b64 = base64.b64encode(key.seed())
    async with tls_server(server_context(cert)) as srv:
        await n.observe([{"host": "127.0.0.1", "port": srv.port}], nonce("s"))
        for path in ("/v1/notary", "/healthz", "/metrics", "/v1/openapi.json",
                     f"/v1/observe/127.0.0.1/{srv.port}?nonce={nonce('s2')}", "/nope"):
            await n.request("GET", path)
    assert len(n.bodies) == 7
    for body in n.bodies:
        assert seed_b64 not in body
        assert key.seed().hex().encode() not in body
    assert seed_b64.decode() not in repr(key) + str(key)
