"""verify_with_notaries end to end: real notaries on loopback, a real TLS site, a real interceptor.

Everything here is a real socket on 127.0.0.1: notary servers (client.cluster.local_cluster),
an HTTPS site and a TLS-intercepting proxy (client.devtools).  The only timed assertions are
the "verdict within the timeout" bounds (timeout + 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

import notary.server
from client.api import verify_with_notaries, verify_with_notaries_sync
from client.bundle import Bundle, BundleEntry
from client.cluster import LocalCluster, local_cluster
from client.devtools import StaticResolver, interceptor, make_cert_context, tls_site
from client.verdict import outcome_class
from notary.core import SigningKey, pin_from_spki_hex, spki_sha256
from notary.errors import InputError
from client.devtools import port_of, serving

HOST = "localhost"
RESOLVER = StaticResolver({HOST: ["127.0.0.1"]})  # the site listens on 127.0.0.1 only


@pytest.fixture(scope="module")
def site_ctx() -> ssl.SSLContext:
    return make_cert_context(HOST, org="Parallax test site")


@pytest.fixture(scope="module")
def forged_ctx() -> ssl.SSLContext:
    return make_cert_context(HOST, org="Interceptor CA")


async def served_der(port: int) -> bytes:
    """The leaf certificate (DER) served on 127.0.0.1:port, fetched with plain ssl (not the prober)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=HOST)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return der


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """Accepts TCP connections and never answers a byte."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(Exception):
            await reader.read()  # wait until the peer gives up

    async with serving(handle) as server:
        try:
            yield port_of(server)
        finally:
            for w in held:
                w.close()


def silent_entry(port: int) -> BundleEntry:
    key = SigningKey.generate()
    return BundleEntry("silent", f"http://127.0.0.1:{port}", "local-silent", key.key_id, key.verify_key.b64)


def probes(cluster: LocalCluster, i: int) -> int:
    svc = cluster.apps[i][notary.server.SERVICE]
    return svc.probes + svc.cache_hits


@pytest.fixture
async def site(site_ctx):
    async with tls_site(site_ctx) as s:
        yield s


@pytest.fixture
async def site_pin(site) -> str:
    return pin_from_spki_hex(spki_sha256(await served_der(site.port)))


@pytest.fixture
async def cluster3(tmp_path: Path):
    async with local_cluster(3, tmp_path, resolver=RESOLVER) as c:
        yield c


# -- verdicts -------------------------------------------------------------------------------------

async def test_clean_check_is_consistent(site, site_pin, cluster3) -> None:
    v = await verify_with_notaries(HOST, site.port, bundle=cluster3.bundle, connect_to=("127.0.0.1", site.port),
                                   wait_all=True, timeout=5)
    assert v.status == "consistent", v.summary
    assert (v.agreeing, v.asked, v.required) == (3, 3, 2)
    assert v.pin == site_pin and v.client.ip == "127.0.0.1" and v.client.source == "probe"
    assert v.complete and v.outliers == ()
    assert v.regions_agreeing == ("local-1", "local-2", "local-3")
    for r in v.results:
        assert r.result == "agrees" and r.counted and r.pins == (site_pin,) and r.ips == ("127.0.0.1",)
    assert all(probes(cluster3, i) == 1 for i in range(3))


async def test_interceptor_on_the_client_path_is_mitm_suspected(site, site_pin, cluster3, forged_ctx) -> None:
    async with interceptor(forged_ctx, ("127.0.0.1", site.port), sni=HOST) as mitm:
        forged_pin = pin_from_spki_hex(spki_sha256(await served_der(mitm.port)))
        v = await verify_with_notaries(HOST, site.port, bundle=cluster3.bundle, connect_to=("127.0.0.1", mitm.port),
                                       wait_all=True, timeout=5)
    assert forged_pin != site_pin
    assert v.status == "mitm_suspected", v.summary
    assert v.client.to_json()["pin"] == forged_pin
    assert v.quorum_pins == (site_pin,)
    assert v.pin is None and v.agreeing == 0
    assert [r.result for r in v.results] == ["disagrees"] * 3


async def test_one_notary_behind_an_interceptor_is_an_outlier(site, site_pin, tmp_path, forged_ctx) -> None:
    async with interceptor(forged_ctx, ("127.0.0.1", site.port), sni=HOST) as mitm, \
            local_cluster(5, tmp_path, resolver=RESOLVER) as cluster:
        # This puts the interceptor on notary-5's network path only.  local_cluster has no
        # per-notary override, and the notary's Prober copies config.connect_override when the
        # app starts (so mutating app[CONFIG].connect_override after start has no effect):
        # mutate the running prober's table instead, before anything is cached.
        cluster.apps[4][notary.server.SERVICE].prober.connect_override[(HOST, site.port)] = ("127.0.0.1", mitm.port)
        v = await verify_with_notaries(HOST, site.port, bundle=cluster.bundle, connect_to=("127.0.0.1", site.port),
                                       wait_all=True, timeout=5)
    assert v.status == "consistent_with_outliers", v.summary
    assert v.outliers == ("notary-5",)
    assert (v.agreeing, v.asked, v.required) == (4, 5, 4)
    bad = v.results[4]
    assert bad.name == "notary-5" and bad.result == "disagrees" and site_pin not in bad.pins
    assert "notary-5 (local-5)" in v.summary and v.pin == site_pin


async def test_one_notary_down_still_decides_within_the_timeout(site, site_pin, cluster3) -> None:
    await cluster3.stop_one(0)
    timeout = 3.0
    t0 = time.monotonic()
    v = await verify_with_notaries(HOST, site.port, bundle=cluster3.bundle, connect_to=("127.0.0.1", site.port),
                                   wait_all=True, timeout=timeout)
    assert time.monotonic() - t0 <= timeout + 1
    assert v.status == "consistent" and v.agreeing == 2 and v.asked == 3
    down = v.results[0]
    assert down.result == "unreachable" and not down.counted and down.name == "notary-1"


async def test_notary_that_never_answers_decides_within_the_timeout(site, site_pin, cluster3) -> None:
    async with silent_server() as port:
        bundle = Bundle(cluster3.bundle.notaries + (silent_entry(port),))
        timeout = 2.0
        t0 = time.monotonic()
        v = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", site.port),
                                       wait_all=True, timeout=timeout)
        elapsed = time.monotonic() - t0
    assert elapsed <= timeout + 1
    assert v.status == "consistent" and (v.agreeing, v.asked, v.required) == (3, 4, 3)
    silent = v.results[3]
    assert silent.result == "unreachable" and "2s" in silent.reason and v.complete


async def test_silent_notaries_cannot_make_a_check_consistent(site, cluster3) -> None:
    """Two of four notaries silenced: mpic needs 3 of the 4 asked, so the verdict is insufficient."""
    async with silent_server() as p1, silent_server() as p2:
        s1, s2 = silent_entry(p1), silent_entry(p2)
        s2 = BundleEntry("silent-2", s2.url, "local-silent-2", s2.key_id, s2.public_key)
        bundle = Bundle(cluster3.bundle.notaries[:2] + (s1, s2))
        v = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", site.port),
                                       timeout=1.0)
    assert v.status == "insufficient" and v.agreeing == 2 and v.asked == 4


async def test_early_decision_marks_slow_notaries_not_waited(site, site_pin, cluster3) -> None:
    async with silent_server() as port:
        bundle = Bundle(cluster3.bundle.notaries + (silent_entry(port),))
        timeout = 5.0
        t0 = time.monotonic()
        early = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", site.port),
                                           timeout=timeout)
        assert time.monotonic() - t0 <= timeout + 1
        full = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", site.port),
                                          wait_all=True, timeout=1.0)
    assert early.status == "consistent"
    assert early.complete is False
    assert [r.result for r in early.results] == ["agrees", "agrees", "agrees", "not_waited"]
    assert not early.results[3].counted and early.asked == 4
    assert full.complete and full.results[3].result == "unreachable"
    assert outcome_class(early.status) == outcome_class(full.status) == "accept"


async def test_early_decision_for_an_intercepted_client(site, cluster3, forged_ctx) -> None:
    async with silent_server() as port, interceptor(forged_ctx, ("127.0.0.1", site.port), sni=HOST) as mitm:
        bundle = Bundle(cluster3.bundle.notaries + (silent_entry(port),))
        early = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", mitm.port),
                                           timeout=5.0)
        full = await verify_with_notaries(HOST, site.port, bundle=bundle, connect_to=("127.0.0.1", mitm.port),
                                          wait_all=True, timeout=1.0)
    assert early.status == full.status == "mitm_suspected"
    assert early.results[3].result == "not_waited" and full.results[3].result == "unreachable"


# -- what the caller already observed -------------------------------------------------------------

async def test_observed_pin_pem_and_der(site, site_pin, cluster3) -> None:
    der = await served_der(site.port)
    pem = ssl.DER_cert_to_PEM_cert(der)
    for observed in (site_pin, pem, pem.encode(), der):
        v = await verify_with_notaries(HOST, site.port, bundle=cluster3.bundle, observed=observed, wait_all=True,
                                       timeout=5)
        assert v.status == "consistent", (type(observed), v.summary)
        assert v.client.source == "supplied" and v.client.ip is None
        assert v.pin == site_pin
    assert site.connections >= 1


async def test_observed_forged_certificate_is_mitm_suspected(site, cluster3, forged_ctx) -> None:
    async with interceptor(forged_ctx, ("127.0.0.1", site.port), sni=HOST) as mitm:
        forged = await served_der(mitm.port)
    v = await verify_with_notaries(HOST, site.port, bundle=cluster3.bundle, observed=forged, wait_all=True, timeout=5)
    assert v.status == "mitm_suspected" and v.client.source == "supplied"


@pytest.mark.parametrize("bad", ["sha256/notapin", b"\x30\x03junk", "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"])
async def test_bad_observed_is_an_input_error(bad, site, cluster3) -> None:
    with pytest.raises(InputError):
        await verify_with_notaries(HOST, site.port, bundle=cluster3.bundle, observed=bad, timeout=2)


# -- sync twin, subset ----------------------------------------------------------------------------

async def test_sync_twin_from_a_thread_without_a_loop(site, site_pin, cluster3) -> None:
    seen: dict[str, object] = {}

    def worker() -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            seen["had_loop"] = True
        seen["verdict"] = verify_with_notaries_sync(HOST, site.port, bundle=cluster3.bundle,
                                                    connect_to=("127.0.0.1", site.port), wait_all=True, timeout=5)

    # A worker thread (no event loop of its own) while this loop keeps serving the notaries and the site.
    await asyncio.to_thread(worker)
    assert "had_loop" not in seen
    v = seen["verdict"]
    assert v.status == "consistent" and v.pin == site_pin  # type: ignore[attr-defined]


async def test_subset_asks_only_k_notaries(site, site_pin, tmp_path) -> None:
    async with local_cluster(5, tmp_path, resolver=RESOLVER) as cluster:
        v = await verify_with_notaries(HOST, site.port, bundle=cluster.bundle, connect_to=("127.0.0.1", site.port),
                                       subset=2, wait_all=True, timeout=5)
        asked = {r.name for r in v.results}
        assert v.asked == 2 and len(asked) == 2 and asked <= {e.name for e in cluster.bundle.notaries}
        assert v.status == "consistent" and v.required == 1
        for i, e in enumerate(cluster.bundle.notaries):
            assert probes(cluster, i) == (1 if e.name in asked else 0), e.name
        # A subset as large as the bundle (or larger) asks everyone.
        v = await verify_with_notaries(HOST, site.port, bundle=cluster.bundle, connect_to=("127.0.0.1", site.port),
                                       subset=9, wait_all=True, timeout=5)
        assert v.asked == 5


async def test_client_cannot_reach_the_site(cluster3) -> None:
    async with silent_server() as port:
        pass  # the port is now closed: connections are refused
    v = await verify_with_notaries("127.0.0.1", port, bundle=cluster3.bundle, wait_all=True, timeout=2)
    assert v.status == "unreachable" and v.client.status == "refused"
    assert all(r.result == "unreachable" for r in v.results)  # the notaries could not observe it either
