"""The helper's request handling: real checks against a local cluster, the cache, concurrency, config.

The real checks use a 3-notary ``local_cluster`` and a TLS site on 127.0.0.1:P that
serves ``site.test``; an intercepting proxy listens on 127.0.0.2 at the *same* port,
so a check carrying ``ip`` = 127.0.0.2 (what Chromium reports when it was sent to the
interceptor) probes the interceptor, exactly as the helper does for the browser.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from client.cluster import local_cluster
from client.devtools import StaticResolver, interceptor, tls_site
from client.helper.service import HelperConfig, HelperService, parse_check
from notary.core import pin_from_spki_hex, spki_sha256
from notary.errors import InputError

HOST = "site.test"


def _leaf(org: str) -> tuple[ssl.SSLContext, bytes]:
    ca = trustme.CA(organization_name=org)
    leaf = ca.issue_cert(HOST)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)
    return ctx, der


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    site_ctx, site_der = _leaf("Site CA")
    forged_ctx, forged_der = _leaf("Interceptor CA")
    async with tls_site(site_ctx, host="127.0.0.1") as site, \
            interceptor(forged_ctx, ("127.0.0.1", site.port), sni=HOST, host="127.0.0.2", port=site.port) as mitm, \
            local_cluster(3, tmp_path / "cluster", resolver=StaticResolver({HOST: ["127.0.0.1"]})) as cluster:
        service = HelperService(HelperConfig(bundle=str(cluster.bundle_path), timeout=5))
        try:
            yield {"site": site, "mitm": mitm, "cluster": cluster, "service": service,
                   "site_der": site_der, "forged_der": forged_der}
        finally:
            await service.close()


async def test_check_clean_path_is_consistent_and_then_cached(world: dict[str, Any]) -> None:
    svc: HelperService = world["service"]
    port = world["site"].port
    r = await svc.handle({"type": "check", "id": "a", "host": HOST, "port": port, "ip": "127.0.0.1"})
    assert r["type"] == "verdict" and r["id"] == "a" and r["cached"] is False
    v = r["verdict"]
    assert v["status"] == "consistent", v["summary"]
    assert v["client"]["ip"] == "127.0.0.1" and v["client"]["source"] == "probe"
    assert v["client"]["pin"] == pin_from_spki_hex(spki_sha256(world["site_der"]))
    again = await svc.handle({"type": "check", "id": "b", "host": HOST, "port": port, "ip": "127.0.0.1"})
    assert again["cached"] is True and again["id"] == "b" and again["verdict"] == v
    assert svc.verifications == 1
    fresh = await svc.handle({"type": "check", "id": "c", "host": HOST, "port": port, "ip": "127.0.0.1", "fresh": True})
    assert fresh["cached"] is False and svc.verifications == 2


async def test_check_through_the_interceptor_is_mitm_suspected(world: dict[str, Any]) -> None:
    svc: HelperService = world["service"]
    r = await svc.handle({"type": "check", "id": 1, "host": HOST, "port": world["site"].port, "ip": "127.0.0.2"})
    v = r["verdict"]
    assert v["status"] == "mitm_suspected", v["summary"]
    assert v["client"]["ip"] == "127.0.0.2"
    assert v["quorum_pins"] == [pin_from_spki_hex(spki_sha256(world["site_der"]))]
    assert v["client"]["pin"] == pin_from_spki_hex(spki_sha256(world["forged_der"]))


async def test_chain_from_the_browser_is_judged_without_probing(world: dict[str, Any]) -> None:
    svc: HelperService = world["service"]
    port = world["site"].port
    forged = base64.b64encode(world["forged_der"]).decode()
    r = await svc.handle({"type": "check", "id": 1, "host": HOST, "port": port, "chain": [forged]})
    assert r["verdict"]["status"] == "mitm_suspected"
    assert r["verdict"]["client"]["source"] == "supplied"
    assert r["verdict"]["client"]["ip"] is None  # judged on what the browser saw; nothing probed
    pin = pin_from_spki_hex(spki_sha256(world["site_der"]))
    r = await svc.handle({"type": "check", "id": 2, "host": HOST, "port": port, "observed_pin": pin})
    assert r["verdict"]["status"] == "consistent"


async def test_concurrent_checks_run_in_parallel_and_identical_ones_share(world: dict[str, Any]) -> None:
    svc: HelperService = world["service"]
    port = world["site"].port
    reqs = [{"type": "check", "id": i, "host": HOST, "port": port, "ip": ip}
            for i, ip in enumerate(["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.1"])]
    out = await asyncio.gather(*(svc.handle(r) for r in reqs))
    assert [o["verdict"]["status"] for o in out] == ["consistent", "consistent", "mitm_suspected", "consistent"]
    assert svc.verifications == 2


# -- with a stand-in verifier (no network) ---------------------------------------------------

class FakeVerify:
    def __init__(self, status: str = "consistent", delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.calls: list[Any] = []
        self.running = 0
        self.peak = 0

    async def __call__(self, req: Any, bundle: Any, policy: Any) -> dict[str, Any]:
        self.calls.append(req)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        return {"status": self.status, "summary": "fake", "host": req.target.host, "port": req.target.port}


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    p = tmp_path / "bundle.json"
    p.write_text(json.dumps({"version": 1, "notaries": []}))
    return p


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cache_ttl_and_shorter_ttl_for_undecided(bundle_file: Path) -> None:
    clock = Clock()
    fake = FakeVerify("consistent")
    svc = HelperService(HelperConfig(bundle=str(bundle_file), cache_ttl=60, negative_ttl=5), verify=fake, clock=clock)
    req = {"type": "check", "host": "a.example", "port": 443}
    assert (await svc.handle(req))["cached"] is False
    clock.now += 59
    assert (await svc.handle(req))["cached"] is True
    clock.now += 2
    assert (await svc.handle(req))["cached"] is False
    fake.status = "unreachable"
    other = {"type": "check", "host": "b.example"}
    await svc.handle(other)
    clock.now += 4
    assert (await svc.handle(other))["cached"] is True
    clock.now += 2
    assert (await svc.handle(other))["cached"] is False
    # The key includes the address and what the browser saw.
    assert (await svc.handle({**req, "ip": "192.0.2.1"}))["cached"] is False
    assert len(fake.calls) == 5


async def test_inflight_limit_bounds_parallel_verifications(bundle_file: Path) -> None:
    fake = FakeVerify(delay=0.05)
    svc = HelperService(HelperConfig(bundle=str(bundle_file), max_inflight=3), verify=fake)
    out = await asyncio.gather(*(svc.handle({"type": "check", "host": f"h{i}.example"}) for i in range(10)))
    assert all(o["type"] == "verdict" for o in out)
    assert fake.peak == 3 and len(fake.calls) == 10


async def test_a_cancelled_requester_does_not_cancel_the_shared_check(bundle_file: Path) -> None:
    fake = FakeVerify(delay=0.1)
    svc = HelperService(HelperConfig(bundle=str(bundle_file)), verify=fake)
    first = asyncio.create_task(svc.handle({"type": "check", "host": "a.example"}))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(svc.handle({"type": "check", "host": "a.example"}))
    await asyncio.sleep(0.01)
    first.cancel()
    r = await second
    assert r["verdict"]["status"] == "consistent" and len(fake.calls) == 1


@pytest.mark.parametrize("msg, code", [
    ({"host": ""}, "bad_host"),
    ({"host": "a b"}, "bad_host"),
    ({"host": "a.example", "port": "443"}, "bad_port"),
    ({"host": "a.example", "port": 70000}, "bad_port"),
    ({"host": "a.example", "port": True}, "bad_port"),
    ({"host": "a.example", "ip": "not-an-ip"}, "bad_ip"),
    ({"host": "a.example", "ip": 5}, "bad_ip"),
    ({"host": "a.example", "observed_pin": "sha256/short"}, "bad_pin"),
    ({"host": "a.example", "observed_pin": "sha256/" + "A" * 43 + "=", "chain": ["AA=="]}, "bad_request"),
    ({"host": "a.example", "chain": []}, "bad_certificate"),
    ({"host": "a.example", "chain": ["%%%"]}, "bad_certificate"),
    ({"host": "a.example", "chain": [base64.b64encode(b"not a certificate").decode()]}, "bad_certificate"),
    ({"host": "a.example", "chain": ["AA=="] * 17}, "bad_certificate"),
    ({"host": "a.example", "fresh": "yes"}, "bad_request"),
])
async def test_bad_check_requests_get_error_frames(msg: dict[str, Any], code: str, bundle_file: Path) -> None:
    svc = HelperService(HelperConfig(bundle=str(bundle_file)), verify=FakeVerify())
    r = await svc.handle({"type": "check", "id": 5, **msg})
    assert r["type"] == "error" and r["id"] == 5
    assert r["error"] == code, r


def test_parse_check_normalises() -> None:
    req = parse_check({"host": "Example.COM", "port": 8443, "ip": "[::1]"})
    assert req.target.host == "example.com" and req.target.port == 8443 and req.ip == "::1"
    with pytest.raises(InputError):
        parse_check({"host": None})


async def test_missing_bundle_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLAX_BUNDLE", str(tmp_path / "nope.json"))
    svc = HelperService(HelperConfig(), verify=FakeVerify())
    r = await svc.handle({"type": "check", "id": 1, "host": "a.example"})
    assert r["error"] == "no_bundle" and str(tmp_path / "nope.json") in r["message"]
    pong = await svc.handle({"type": "ping", "id": 2})
    assert pong["type"] == "pong" and pong["bundle"]["path"] == str(tmp_path / "nope.json") and "error" in pong["bundle"]


def test_config_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARALLAX_POLICY", raising=False)
    cfg = tmp_path / "helper.json"
    cfg.write_text(json.dumps({"policy": "consensus", "timeout": 3, "cache_ttl": 10}))
    monkeypatch.setenv("PARALLAX_HELPER_CONFIG", str(cfg))
    c = HelperConfig.load()
    assert (c.policy, c.timeout, c.cache_ttl) == ("consensus", 3, 10)
    monkeypatch.setenv("PARALLAX_POLICY", "majority")
    assert HelperConfig.load().policy == "majority"
    assert HelperConfig.load(policy="minority").policy == "minority"
    cfg.write_text("[]")
    with pytest.raises(InputError):
        HelperConfig.load()
    cfg.write_text(json.dumps({"timeout": -1}))
    with pytest.raises(InputError):
        HelperConfig.load()
    monkeypatch.setenv("PARALLAX_HELPER_CONFIG", str(tmp_path / "absent.json"))
    assert HelperConfig.load(policy=None).policy == "majority"


def test_config_dir_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARALLAX_HELPER_CONFIG", raising=False)
    monkeypatch.delenv("PARALLAX_POLICY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "parallax").mkdir()
    (tmp_path / "parallax" / "helper.json").write_text(json.dumps({"policy": "perspectives"}))
    assert HelperConfig.load().policy == "perspectives"


async def test_cached_consistent_verdict_does_not_hide_a_later_interception(tmp_path: Path) -> None:
    """Chromium mode: the cache is keyed by the key the helper sees *now*.

    The site at 127.0.0.1:P starts serving a forged certificate after a clean,
    cached check (an interceptor taking over the same address); the notaries still
    answer from their own cache with the real key.  The next, non-fresh check must
    say mitm_suspected, not replay the cached "consistent".
    """
    site_ctx, site_der = _leaf("Site CA")
    forged_ctx, forged_der = _leaf("Interceptor CA")
    state = {"mitm": False}

    def pick(sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if state["mitm"]:
            sock.context = forged_ctx

    site_ctx.sni_callback = pick
    async with tls_site(site_ctx, host="127.0.0.1") as site, \
            local_cluster(3, tmp_path / "cluster", resolver=StaticResolver({HOST: ["127.0.0.1"]})) as cluster:
        service = HelperService(HelperConfig(bundle=str(cluster.bundle_path), timeout=5))
        try:
            req = {"type": "check", "host": HOST, "port": site.port, "ip": "127.0.0.1"}
            first = await service.handle({**req, "id": 1})
            assert first["verdict"]["status"] == "consistent"
            state["mitm"] = True
            later = await service.handle({**req, "id": 2})
            assert later["cached"] is False
            assert later["verdict"]["status"] == "mitm_suspected", later["verdict"]["summary"]
            assert later["verdict"]["client"]["pin"] == pin_from_spki_hex(spki_sha256(forged_der))
        finally:
            await service.close()


async def test_the_helper_remembers_keys_and_honours_pins(world: dict[str, Any]) -> None:
    """Key memory, as ``parallax check`` uses it: first use, then known; a pin the key does not match is an alarm."""
    from client.keymemory import KeyStore
    from notary.core import Target

    svc: HelperService = world["service"]
    port = world["site"].port
    req = {"type": "check", "host": HOST, "port": port, "ip": "127.0.0.1", "fresh": True}
    first = (await svc.handle({**req, "id": 1}))["verdict"]
    assert first["status"] == "consistent" and first["memory"]["change"] == "first_use", first["memory"]
    again = (await svc.handle({**req, "id": 2}))["verdict"]
    assert again["status"] == "consistent" and again["memory"]["change"] == "known", again["memory"]
    site_key = spki_sha256(world["site_der"])
    assert [k.spki_sha256 for k in KeyStore().memory(Target.parse(HOST, port)).keys] == [site_key]

    # The user pins another key for this host (`parallax pins pin`): the site's real key is now a mismatch.
    KeyStore().pin(Target.parse(HOST, port), spki_sha256(world["forged_der"]), 0)
    pinned = (await svc.handle({**req, "id": 3}))["verdict"]
    assert pinned["status"] == "pin_mismatch" and pinned["memory"]["pinned"] == "mismatch", pinned["memory"]


async def test_memory_false_keeps_nothing(world: dict[str, Any]) -> None:
    from client.keymemory import default_path

    svc = HelperService(HelperConfig(bundle=str(world["cluster"].bundle_path), timeout=5, memory=False))
    try:
        r = await svc.handle({"type": "check", "id": 1, "host": HOST, "port": world["site"].port, "ip": "127.0.0.1"})
        assert r["verdict"]["status"] == "consistent" and r["verdict"]["memory"] is None
        assert not default_path().exists()
    finally:
        await svc.close()


def test_memory_setting_must_be_a_boolean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "helper.json"
    monkeypatch.setenv("PARALLAX_HELPER_CONFIG", str(cfg))
    cfg.write_text(json.dumps({"memory": False}))
    assert HelperConfig.load().memory is False
    cfg.write_text(json.dumps({"memory": "no"}))
    with pytest.raises(InputError, match="memory must be true or false"):
        HelperConfig.load()
