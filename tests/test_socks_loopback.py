"""SOCKS5 vantages on loopback: a real Dante server (``danted``), real TLS sites, real notaries, real interceptors.

The proxy runs on 127.0.0.1 and connects to the target itself, so "an interceptor on
the client's path but not the proxy's" is the client's own probe pointed at an
interceptor (``connect_to``) while the proxy reaches the real site.  The recording
SOCKS server at the end is a seam fake (it records what the client sends: a real Tor,
whose IsolateSOCKSAuth it stands in for, cannot bootstrap without a network).

Needs ``danted`` (Debian's dante-server) and root; skips otherwise, unless
``PARALLAX_REQUIRE_SOCKS=1`` (CI), in which case a missing prerequisite fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
import trustme

from client.api import verify_with_notaries
from client.bundle import Bundle
from client.cli import main
from client.cluster import local_cluster
from client.devtools import StaticResolver, interceptor, make_cert_context, tls_site
from client.keymemory import KeyStore
from client.socks import parse_via, probe_via
from notary.core import Target, pin_from_spki_hex
from notary.errors import InputError
from tests.support.dante import Dante, free_port, require_dante, running_dante

HOST = "localhost"
RESOLVER = StaticResolver({HOST: ["127.0.0.1"]})


@pytest.fixture(scope="module")
def dante(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dante]:
    require_dante()
    with running_dante(tmp_path_factory.mktemp("dante")) as d:
        yield d


@pytest.fixture(scope="module")
def site_ctx():
    return make_cert_context(HOST, org="Parallax test site")


@pytest.fixture(scope="module")
def corp_ca() -> trustme.CA:
    return trustme.CA(organization_name="Corp interception CA")


@pytest.fixture
async def site(site_ctx):
    async with tls_site(site_ctx) as s:
        yield s


@pytest.fixture
async def mitm(site, corp_ca):
    """An interceptor forging with the corporate CA, in front of the site."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    corp_ca.issue_cert(HOST).configure_cert(ctx)
    async with interceptor(ctx, ("127.0.0.1", site.port), sni=HOST) as m:
        yield m


@pytest.fixture
async def cluster3(tmp_path: Path):
    async with local_cluster(3, tmp_path, resolver=RESOLVER) as c:
        yield c


async def _pin_at(port: int) -> str:
    v = await probe_via(Target.parse("127.0.0.1", port, HOST), parse_via("socks5://127.0.0.1:1"), timeout=0.5)
    assert v.status == "proxy_failed"  # nothing listens on port 1: the proxy itself failed, reported as data
    from client.api import client_probe

    cv = await client_probe(Target.parse(HOST, port), connect_to=("127.0.0.1", port), timeout=5)
    assert cv.spki_sha256
    return pin_from_spki_hex(cv.spki_sha256)


# -- the prober through Dante ----------------------------------------------------------------------

async def test_probe_through_dante_socks5_and_socks5h(dante: Dante, site) -> None:
    site_pin = await _pin_at(site.port)
    target = Target.parse(HOST, site.port)
    local = await probe_via(target, parse_via(f"socks5://127.0.0.1:{dante.port}"), timeout=5)
    remote = await probe_via(target, parse_via(dante.url), timeout=5)
    for v in (local, remote):
        assert v.status == "ok" and pin_from_spki_hex(v.spki_sha256 or "") == site_pin, v
    assert local.ip == "127.0.0.1" and not local.remote_dns  # resolved here
    assert remote.ip is None and remote.remote_dns  # the proxy resolved the name: we do not know the address
    assert f"127.0.0.1.{site.port}" in dante.log_text()  # Dante really carried both connections


async def test_target_unreachable_from_the_proxy_is_a_probe_failure(dante: Dante) -> None:
    closed = free_port()
    v = await probe_via(Target.parse(HOST, closed), parse_via(dante.url), timeout=5)
    assert v.status == "refused" and v.ip is None, v


async def test_unreachable_proxy_is_data_not_an_exception(site) -> None:
    dead = free_port()
    v = await probe_via(Target.parse(HOST, site.port), parse_via(f"socks5h://127.0.0.1:{dead}"), timeout=2)
    assert v.status == "proxy_failed" and "cannot connect to the proxy" in (v.detail or "")
    assert v.label == f"socks5h://127.0.0.1:{dead}"


# -- verdicts with notaries and proxies ------------------------------------------------------------------

async def test_interceptor_on_client_path_not_proxy_path(dante: Dante, site, mitm, cluster3) -> None:
    site_pin = await _pin_at(site.port)
    v = await verify_with_notaries(HOST, site.port, bundle=cluster3.bundle, connect_to=("127.0.0.1", mitm.port),
                                   via=[dante.url], wait_all=True, timeout=5)
    assert v.status == "mitm_suspected", v.summary
    (px,) = v.vantages
    assert px.result == "disagrees" and px.pins == (site_pin,) and not px.counted
    assert px.to_json()["signed"] is False
    # Proxies alone, under the policy that lets them decide: the same conclusion without any notary.
    alone = await verify_with_notaries(HOST, site.port, bundle=Bundle(()), policy="proxies",
                                       connect_to=("127.0.0.1", mitm.port), via=[dante.url, f"socks5://127.0.0.1:{dante.port}"],
                                       timeout=5)
    assert alone.status == "mitm_suspected" and (alone.agreeing, alone.asked) == (0, 2), alone.summary
    # ... and under the default policy, proxies alone decide nothing.
    default = await verify_with_notaries(HOST, site.port, bundle=Bundle(()), connect_to=("127.0.0.1", mitm.port),
                                         via=[dante.url], timeout=5)
    assert default.status == "insufficient" and "not counted under policy mpic" in default.summary


async def test_clean_path_with_proxy_and_a_dead_proxy(dante: Dante, site, cluster3) -> None:
    dead = f"socks5h://127.0.0.1:{free_port()}"
    v = await verify_with_notaries(HOST, site.port, bundle=cluster3.bundle, connect_to=("127.0.0.1", site.port),
                                   via=[dante.url, dead], wait_all=True, timeout=5)
    assert v.status == "consistent", v.summary
    assert [x.result for x in v.vantages] == ["agrees", "proxy_failed"]
    # Counted, the dead proxy counts against the quorum (as a failed notary would): all of 2 needed.
    alone = await verify_with_notaries(HOST, site.port, bundle=Bundle(()), policy="proxies",
                                       connect_to=("127.0.0.1", site.port), via=[dante.url, dead], timeout=5)
    assert alone.status == "insufficient" and (alone.agreeing, alone.asked, alone.required) == (1, 2, 2)


async def test_expected_interceptor_by_ca_certificate(dante: Dante, site, mitm, cluster3, corp_ca) -> None:
    v = await verify_with_notaries(HOST, site.port, bundle=cluster3.bundle, connect_to=("127.0.0.1", mitm.port),
                                   via=[dante.url], expect_interceptor=[corp_ca.cert_pem.bytes()], wait_all=True, timeout=5)
    assert v.status == "intercepted_as_expected", v.summary
    assert v.interception is not None and v.interception.matched is not None
    other = trustme.CA(organization_name="Someone else")
    w = await verify_with_notaries(HOST, site.port, bundle=cluster3.bundle, connect_to=("127.0.0.1", mitm.port),
                                   expect_interceptor=[other.cert_pem.bytes()], wait_all=True, timeout=5)
    assert w.status == "mitm_suspected" and w.interception is not None and w.interception.matched is None


async def test_memory_through_the_library(dante: Dante, site, mitm, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite3")
    kw: dict[str, Any] = dict(bundle=Bundle(()), policy="proxies", via=[dante.url], timeout=5, memory=store)
    first = await verify_with_notaries(HOST, site.port, connect_to=("127.0.0.1", site.port), **kw)
    again = await verify_with_notaries(HOST, site.port, connect_to=("127.0.0.1", site.port), **kw)
    assert first.status == again.status == "consistent"
    assert first.memory is not None and first.memory.change == "first_use"
    assert again.memory is not None and again.memory.change == "known"
    # A new key that the (advisory) proxy does not confirm: no quorum, and the key changed -> alarm.
    changed = await verify_with_notaries(HOST, site.port, connect_to=("127.0.0.1", mitm.port), bundle=Bundle(()),
                                         via=[dante.url], timeout=5, memory=store)
    assert changed.status == "key_changed", changed.summary
    judged = {k.spki_sha256: dict(k.statuses) for k in store.memory(Target.parse(HOST, site.port)).keys}
    assert sorted(judged.values(), key=str) == [{"consistent": 2}, {"key_changed": 1}]


async def test_first_use_does_not_vouch_a_key_a_proxy_contradicted(dante: Dante, site, mitm, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite3")
    kw: dict[str, Any] = dict(bundle=Bundle(()), via=[dante.url], timeout=5, memory=store)  # advisory proxy, no notaries
    attacked = await verify_with_notaries(HOST, site.port, connect_to=("127.0.0.1", mitm.port), **kw)
    assert attacked.status == "insufficient" and attacked.vantages[0].result == "disagrees"
    assert [dict(k.statuses) for k in store.memory(Target.parse(HOST, site.port)).keys] == [{"disputed": 1}]
    # The attack ends: the real key is not reported as a change away from the attacker's key.
    clean = await verify_with_notaries(HOST, site.port, connect_to=("127.0.0.1", site.port), **kw)
    assert clean.status == "insufficient" and clean.memory is not None and clean.memory.change == "first_use"


# -- the CLI ----------------------------------------------------------------------------------------------

def _cli(*argv: str) -> tuple[int, dict]:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(list(argv))
    out = buf.getvalue()
    return code, (json.loads(out) if out.strip().startswith("{") else {"text": out})


async def test_cli_via_without_a_bundle(dante: Dante, site, mitm, monkeypatch, tmp_path: Path, corp_ca) -> None:
    monkeypatch.setenv("PARALLAX_BUNDLE", str(tmp_path / "no-bundle-here.json"))
    base = ["check", f"{HOST}:{site.port}", "--via", dante.url, "--timeout", "5", "--no-memory"]
    clean = ["--connect-to", f"{HOST}:{site.port}:127.0.0.1:{site.port}"]
    bad = ["--connect-to", f"{HOST}:{site.port}:127.0.0.1:{mitm.port}"]
    code, v = await asyncio.to_thread(_cli, *base, *clean, "--policy", "proxies", "--json")
    assert (code, v["status"]) == (0, "consistent") and v["vantages"][0]["signed"] is False
    code, v = await asyncio.to_thread(_cli, *base, *bad, "--policy", "proxies", "--json")
    assert (code, v["status"]) == (1, "mitm_suspected")
    code, v = await asyncio.to_thread(_cli, *base, *bad, "--json")
    assert (code, v["status"]) == (2, "insufficient")
    ca_file = tmp_path / "corp.pem"
    ca_file.write_bytes(corp_ca.cert_pem.bytes())
    code, v = await asyncio.to_thread(_cli, *base, *bad, "--policy", "proxies", "--expect-interceptor", str(ca_file))
    assert code == 3, v
    text = v["text"]
    assert "verdict: intercepted_as_expected" in text and "expected interceptor declared: sha256/" in text
    assert "UNSIGNED" in text and "dns at proxy" in text
    # Without a bundle and without --via, a missing bundle is still an error (66), one line.
    assert await asyncio.to_thread(_cli, "check", f"{HOST}:{site.port}", "--json") == (66, {"text": ""})


async def test_cli_memory_is_on_by_default_and_listed(dante: Dante, site, mitm, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PARALLAX_BUNDLE", str(tmp_path / "no-bundle-here.json"))
    base = ["check", f"{HOST}:{site.port}", "--via", dante.url, "--timeout", "5", "--json"]
    code, v = await asyncio.to_thread(_cli, *base, "--connect-to", f"{HOST}:{site.port}:127.0.0.1:{site.port}")
    assert (code, v["status"], v["memory"]["change"]) == (2, "insufficient", "first_use")
    code, v = await asyncio.to_thread(_cli, *base, "--connect-to", f"{HOST}:{site.port}:127.0.0.1:{mitm.port}")
    assert (code, v["status"], v["memory"]["change"]) == (1, "key_changed", "changed")
    code, shown = await asyncio.to_thread(_cli, "pins", "show", f"{HOST}:{site.port}", "--json")
    assert code == 0
    assert len(json.loads(shown["text"])[0]["keys"]) == 2


def test_cli_bad_via_is_a_usage_error(capsys) -> None:
    for bad in ("http://127.0.0.1:8080", "socks5://127.0.0.1", "socks5://u@127.0.0.1:1080", "socks5://127.0.0.1:1080/x"):
        assert main(["check", "example.com", "--via", bad, "--no-memory"]) == 64, bad
    err = capsys.readouterr().err
    assert err.count("\n") == 4 and "Traceback" not in err


async def test_too_many_proxies_is_refused_before_any_probe() -> None:
    from client.socks import MAX_VIAS

    with pytest.raises(InputError, match="at most"):
        await verify_with_notaries(HOST, 443, bundle=Bundle(()), via=["socks5h://127.0.0.1:1"] * (MAX_VIAS + 1))


def test_parse_via() -> None:
    s = parse_via("socks5h://user:p%40ss@127.0.0.1:9050")
    assert (s.scheme, s.host, s.port, s.username, s.password) == ("socks5h", "127.0.0.1", 9050, "user", "p@ss")
    assert s.label == "socks5h://127.0.0.1:9050" and "p@ss" not in repr(s)
    assert parse_via("socks5://[::1]:1080").label == "socks5://[::1]:1080"
    for bad in ("", "socks4://127.0.0.1:1080", "socks5://127.0.0.1:0", "socks5://:1080", "socks5://h:1080?x=1"):
        with pytest.raises(InputError):
            parse_via(bad)


# -- what goes on the wire: credentials for Tor stream isolation, and where names are resolved ------------

@dataclass
class Recorder:
    """A SOCKS5 endpoint that records greetings, RFC 1929 credentials and CONNECT targets, then refuses."""

    port: int = 0
    methods: list[bytes] = field(default_factory=list)
    creds: list[tuple[bytes, bytes]] = field(default_factory=list)
    targets: list[tuple[int, bytes]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ver, n = await r.readexactly(2)
            methods = await r.readexactly(n)
            rec.methods.append(methods)
            if 2 in methods:
                w.write(b"\x05\x02")
                _v, ul = await r.readexactly(2)
                user = await r.readexactly(ul)
                (pl,) = await r.readexactly(1)
                rec.creds.append((user, await r.readexactly(pl)))
                w.write(b"\x01\x00")
            else:
                w.write(b"\x05\x00")
            _v, _cmd, _rsv, atyp = await r.readexactly(4)
            if atyp == 3:
                (ln,) = await r.readexactly(1)
                addr = await r.readexactly(ln)
            else:
                addr = await r.readexactly(4 if atyp == 1 else 16)
            await r.readexactly(2)
            rec.targets.append((atyp, addr))
            w.write(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")  # connection refused
            await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    try:
        yield rec
    finally:
        server.close()
        await server.wait_closed()


async def test_each_vantage_gets_its_own_credentials_and_socks5h_sends_the_name() -> None:
    async with recorder() as rec:
        target = Target.parse(HOST, 443)
        url = f"socks5h://127.0.0.1:{rec.port}"
        views = [await probe_via(target, parse_via(url), timeout=2) for _ in range(2)]
        assert [v.status for v in views] == ["refused", "refused"]
        assert len(rec.creds) == 2 and rec.creds[0] != rec.creds[1]  # two circuits under IsolateSOCKSAuth
        assert all(2 in m and 0 in m for m in rec.methods)  # "no authentication" still offered
        assert rec.targets == [(3, b"localhost")] * 2  # the name, for the proxy to resolve
        # socks5:// resolves here and sends an address; --no-isolate sends no credentials.
        await probe_via(target, parse_via(f"socks5://127.0.0.1:{rec.port}"), timeout=2, isolate=False)
        assert rec.targets[-1][0] in (1, 4) and rec.methods[-1] == b"\x00"
        # Credentials in the URL are used as given.
        await probe_via(target, parse_via(f"socks5h://alice:s3cret@127.0.0.1:{rec.port}"), timeout=2)
        assert rec.creds[-1] == (b"alice", b"s3cret")


# -- the browser helper takes the same vantages from its configuration -----------------------------------

async def test_helper_config_vantages(dante: Dante, site, cluster3, tmp_path: Path, corp_ca) -> None:
    from client.helper.service import HelperConfig, HelperService

    ca_file = tmp_path / "corp.pem"
    ca_file.write_bytes(corp_ca.cert_pem.bytes())
    cfg_file = tmp_path / "helper.json"
    cfg_file.write_text(json.dumps({"bundle": str(cluster3.bundle_path), "timeout": 5, "via": [dante.url],
                                    "expect_interceptor": [str(ca_file)]}))
    svc = HelperService(HelperConfig.load(cfg_file))
    try:
        pong = await svc.handle({"type": "ping", "id": 1})
        assert pong["vantages"] == [dante.url]
        resp = await svc.handle({"type": "check", "id": 2, "host": HOST, "port": site.port, "ip": "127.0.0.1"})
        v = resp["verdict"]
        assert v["status"] == "consistent", v["summary"]
        assert [(x["name"], x["result"], x["signed"]) for x in v["vantages"]] == [(dante.url, "agrees", False)]
        assert v["interception"]["matched"] is None and len(v["interception"]["expected"]) == 1
    finally:
        await svc.close()


def test_helper_config_rejects_bad_vantages(tmp_path: Path) -> None:
    from client.helper.service import HelperConfig

    for doc in ({"via": ["http://127.0.0.1:8080"]}, {"via": "socks5://127.0.0.1:1080"}, {"isolate": "yes"},
                {"expect_interceptor": ["sha256/nope"]}, {"expect_interceptor": [str(tmp_path / "missing.pem")]}):
        p = tmp_path / "helper.json"
        p.write_text(json.dumps(doc))
        with pytest.raises(InputError) as exc:
            HelperConfig.load(p)
        assert exc.value.code == "bad_config", doc


async def test_silent_proxy_times_out_as_data(site) -> None:
    held: list[asyncio.StreamWriter] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # accepts, never says a SOCKS word
        with contextlib.suppress(Exception):
            await r.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        v = await probe_via(Target.parse(HOST, site.port), parse_via(f"socks5h://127.0.0.1:{port}"), timeout=0.5)
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    assert v.status == "timeout" and v.spki_sha256 is None, v
