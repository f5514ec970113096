"""The SSRF guard, end to end through the real Prober.

Every refused case must come back as exactly one ``blocked_by_policy`` result and
must make no connection at all.  To prove that, the refused cases run with a
``connector`` that records calls and fails the test when called: that connector is a
fake at the connect seam, used because a real connection to these addresses is
exactly what must never happen.  Names are answered by a fake resolver (real DNS
cannot be staged, and must never leave loopback).

Where a target has to be *allowed* ("public"), 127.0.0.2 plays the public role via
the ``--allow-network 127.0.0.2/32`` opt-in, with a real TLS server bound on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from typing import AsyncIterator

import pytest

from notary.core import AddressPolicy, Target, normalize_host, parse_networks, refusal_reason
from notary.core.target import parse_legacy_ipv4
from notary.errors import InputError
from notary.prober import Prober
from tests.support.tls import leaf_spki, make_ca, server_context, tls_server

NOW = 1_700_000_000
PUBLIC_ROLE = "127.0.0.2"


def clock() -> int:
    return NOW


class FakeResolver:
    """A fake at the DNS seam: canned answers, one per call (the last repeats); records calls."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return list(self.answers[min(len(self.calls), len(self.answers)) - 1])


class RecordingRefusingConnector:
    """A fake at the connect seam: records the call and fails the test. No socket is ever opened."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, ip: str, port: int):
        self.calls.append((ip, port))
        pytest.fail(f"the prober tried to connect to {ip}:{port} despite the address policy")


async def assert_blocked(
    target: Target,
    policy: AddressPolicy = AddressPolicy(),
    resolver: FakeResolver | None = None,
) -> None:
    connector = RecordingRefusingConnector()
    resolver = resolver or FakeResolver()
    prober = Prober(policy, clock=clock, resolver=resolver, connector=connector)
    results = await prober.probe(target)
    assert len(results) == 1
    [r] = results
    assert r.status == "blocked_by_policy", (target, r.status, r.detail)
    assert r.detail and any(w in r.detail for w in ("refused", "allowlist", "not an IP address")), r.detail
    assert r.chain == () and r.spki_sha256 is None and r.tls_version is None
    assert r.target == target
    assert r.observed_at == NOW
    assert connector.calls == []
    # all_addresses must refuse just the same.
    results = await prober.probe(target, all_addresses=True)
    assert [x.status for x in results] == ["blocked_by_policy"]
    assert connector.calls == []


# --- refused address classes, as literals (no resolution) -----------------------------

LITERALS = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.0.1", "private"),
    ("192.168.255.254", "private"),
    ("169.254.169.254", "link_local"),
    ("fe80::1", "link_local"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("2001:db8::1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("192.0.0.8", "reserved"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    ("::ffff:10.0.0.1", "private (embedded IPv4)"),
    ("::ffff:127.0.0.1", "loopback (embedded IPv4)"),
    ("::ffff:169.254.169.254", "link_local (embedded IPv4)"),
    ("::127.0.0.1", "loopback (embedded IPv4)"),
    ("64:ff9b::a00:1", "private (embedded IPv4)"),
    ("64:ff9b::7f00:1", "loopback (embedded IPv4)"),
    ("64:ff9b:1::1", "reserved"),
    ("2002:7f00:1::", "loopback (embedded IPv4)"),
    ("2002:a00:1::1", "private (embedded IPv4)"),
    ("2002:a9fe:a9fe::", "link_local (embedded IPv4)"),
]


@pytest.mark.parametrize(("host", "why"), LITERALS, ids=[h for h, _ in LITERALS])
async def test_refused_literal(host: str, why: str) -> None:
    assert refusal_reason(ipaddress.ip_address(host)) == why
    target = Target.parse(host, 443)
    assert target.sni is None
    resolver = FakeResolver()
    await assert_blocked(target, resolver=resolver)
    assert resolver.calls == []  # a literal is never resolved


# --- spellings that name an internal address -------------------------------------------

SPELLINGS = [
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0X7F000001", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.0000.0000.0001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("10.1", "10.0.0.1"),
    ("167772161", "10.0.0.1"),
    ("0300.0250.1.1", "192.168.1.1"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("0xa9fea9fe", "169.254.169.254"),
    ("0", "0.0.0.0"),
    ("127.0.0.1.", "127.0.0.1"),
    ("0x7f000001.", "127.0.0.1"),
    ("10.1.", "10.0.0.1"),
    ("[::1]", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("::FFFF:7F00:1", "::ffff:7f00:1"),
    ("0:0:0:0:0:0:0:1", "::1"),
    # IDN / UTS #46 compatibility forms: full-width digits and letters, other full stops.
    ("\uff10x\uff17f000001", "127.0.0.1"),  # ０x７f000001
    ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.1"),  # １２７.０.０.１
    ("127\u30020\u30020\u30021", "127.0.0.1"),  # 127。0。0。1 (ideographic full stop)
    ("127\uff0e0\uff0e0\uff0e1", "127.0.0.1"),  # full-width full stop
    ("127\uff610\uff610\uff611", "127.0.0.1"),  # half-width ideographic full stop
    ("127\u30020\u30020\u30021\u3002", "127.0.0.1"),  # ...with a trailing ideographic dot
    ("\uff11\uff10.\uff11", "10.0.0.1"),  # １０.１
]


@pytest.mark.parametrize(("spelling", "canonical"), SPELLINGS, ids=[c + "<-" + repr(s) for s, c in SPELLINGS])
async def test_refused_spelling(spelling: str, canonical: str) -> None:
    assert normalize_host(spelling) == canonical
    target = Target.parse(spelling, 443)
    assert target.host == canonical
    assert target.sni is None  # an address, not a name: no SNI
    resolver = FakeResolver()
    await assert_blocked(target, resolver=resolver)
    assert resolver.calls == []


# --- names that resolve inward ---------------------------------------------------------

NAMES = [
    ("localhost", ["127.0.0.1", "::1"]),
    ("localhost.", ["127.0.0.1"]),
    ("intranet.test", ["10.0.0.5"]),
    ("router.test", ["192.168.1.1"]),
    ("metadata.test", ["169.254.169.254"]),
    ("v6.test", ["::1"]),
    ("mapped.test", ["::ffff:127.0.0.1"]),
    ("ula.test", ["fd00::1"]),
    ("nat64.test", ["64:ff9b::a9fe:a9fe"]),
    ("cgnat.test", ["100.64.1.1"]),
    ("garbage.test", ["not-an-address"]),
    # A name mixing an allowed ("public") address with an internal one is refused outright.
    ("mixed-public-first.test", [PUBLIC_ROLE, "10.0.0.1"]),
    ("mixed-internal-first.test", ["127.0.0.1", PUBLIC_ROLE]),
    ("mixed-mapped.test", [PUBLIC_ROLE, "::ffff:192.168.0.1"]),
]


@pytest.mark.parametrize(("name", "answer"), NAMES, ids=[n for n, _ in NAMES])
async def test_name_resolving_inward_is_refused(name: str, answer: list[str]) -> None:
    policy = AddressPolicy(allow_networks=parse_networks([PUBLIC_ROLE + "/32"]))
    resolver = FakeResolver(answer)
    target = Target.parse(name, 443)
    await assert_blocked(target, policy, resolver)
    assert resolver.calls == [target.host, target.host]  # once per probe (two probes in assert_blocked)


async def test_mixed_answer_reports_the_internal_address() -> None:
    policy = AddressPolicy(allow_networks=parse_networks([PUBLIC_ROLE + "/32"]))
    connector = RecordingRefusingConnector()
    prober = Prober(policy, clock=clock, resolver=FakeResolver([PUBLIC_ROLE, "10.0.0.1"]), connector=connector)
    [r] = await prober.probe(Target.parse("mixed.test", 443))
    assert r.status == "blocked_by_policy"
    assert r.ip == "10.0.0.1"
    assert "10.0.0.1" in (r.detail or "") and "private" in (r.detail or "")
    assert connector.calls == []


# --- ports -----------------------------------------------------------------------------


@pytest.mark.parametrize("port", [22, 25, 80, 6379, 8443, 65535])
async def test_port_not_on_allowlist_is_refused(port: int) -> None:
    # The address itself is allowed (127.0.0.2 in the public role): only the port is wrong.
    policy = AddressPolicy(allow_networks=parse_networks([PUBLIC_ROLE + "/32"]))
    resolver = FakeResolver([PUBLIC_ROLE])
    await assert_blocked(Target.parse(PUBLIC_ROLE, port), policy, resolver)
    await assert_blocked(Target.parse("public.test", port), policy, resolver)
    assert resolver.calls == []  # the port check comes before resolution


# --- the --allow-network opt-in --------------------------------------------------------


async def test_allow_network_lets_loopback_through() -> None:
    leaf = make_ca().issue_cert("127.0.0.1")
    async with tls_server(server_context(leaf)) as srv:
        target = Target.parse("127.0.0.1", srv.port)
        # Refused by default, even with the port allowed...
        await assert_blocked(target, AddressPolicy(allowed_ports=frozenset({srv.port})))
        # ...and let through by the operator's opt-in.
        policy = AddressPolicy(parse_networks(["127.0.0.0/8"]), frozenset({srv.port}))
        [r] = await Prober(policy, clock=clock).probe(target)
    assert r.status == "ok", r.detail
    assert r.ip == "127.0.0.1"
    assert r.spki_sha256 == leaf_spki(leaf)


async def test_allow_network_is_exact() -> None:
    # 127.0.0.2/32 allowed does not allow its neighbours.
    policy = AddressPolicy(allow_networks=parse_networks([PUBLIC_ROLE + "/32"]))
    for host in ("127.0.0.1", "127.0.0.3", "::1"):
        await assert_blocked(Target.parse(host, 443), policy)
    assert policy.address_reason(PUBLIC_ROLE) is None
    assert policy.address_reason("::ffff:127.0.0.2") is None  # the mapped form names the same address


# --- DNS rebinding and the peer re-check -----------------------------------------------


@contextlib.asynccontextmanager
async def public_role_server() -> AsyncIterator[tuple[int, str]]:
    leaf = make_ca().issue_cert("rebind.test")
    try:
        cm = tls_server(server_context(leaf), host=PUBLIC_ROLE)
        srv = await cm.__aenter__()
    except OSError as exc:
        pytest.skip(f"cannot bind {PUBLIC_ROLE} (loopback alias): {exc}")
    try:
        yield srv.port, leaf_spki(leaf)
    finally:
        await cm.__aexit__(None, None, None)


async def test_dns_rebinding_is_refused_and_connect_uses_the_checked_address() -> None:
    async with public_role_server() as (port, spki):
        policy = AddressPolicy(parse_networks([PUBLIC_ROLE + "/32"]), frozenset({port}))
        resolver = FakeResolver([PUBLIC_ROLE], ["127.0.0.1"])  # rebinds on the second answer
        connects: list[tuple[str, int]] = []

        async def recording_connect(ip: str, port: int):
            # Not a fake: records, then opens the real connection it was asked for.
            connects.append((ip, port))
            return await asyncio.open_connection(ip, port)

        prober = Prober(policy, clock=clock, resolver=resolver, connector=recording_connect)
        target = Target.parse("rebind.test", port)
        [first] = await prober.probe(target)
        assert first.status == "ok", first.detail
        assert first.ip == PUBLIC_ROLE
        assert first.spki_sha256 == spki
        assert resolver.calls == ["rebind.test"]
        assert connects == [(PUBLIC_ROLE, port)]

        [second] = await prober.probe(target)
        assert second.status == "blocked_by_policy"
        assert second.ip == "127.0.0.1"
        assert resolver.calls == ["rebind.test", "rebind.test"]  # once per probe
        assert connects == [(PUBLIC_ROLE, port)]  # nothing for the rebound answer


async def test_peer_address_is_rechecked_after_connect() -> None:
    leaf = make_ca().issue_cert("peer.test")
    hellos = 0

    def count(_obj, _name, _ctx) -> None:
        nonlocal hellos
        hellos += 1

    ctx: ssl.SSLContext = server_context(leaf)
    ctx.sni_callback = count
    async with tls_server(ctx, host="127.0.0.1") as srv:
        asked: list[str] = []

        async def misrouting_connect(ip: str, port: int):
            # A fake at the connect seam standing in for the network itself routing the
            # connection elsewhere than the checked address: it really connects, but to
            # 127.0.0.1, whatever it was asked for.
            asked.append(ip)
            return await asyncio.open_connection("127.0.0.1", port)

        policy = AddressPolicy(parse_networks([PUBLIC_ROLE + "/32"]), frozenset({srv.port}))
        resolver = FakeResolver([PUBLIC_ROLE])
        prober = Prober(policy, clock=clock, resolver=resolver, connector=misrouting_connect)
        [r] = await prober.probe(Target.parse("peer.test", srv.port))
    assert asked == [PUBLIC_ROLE]
    assert r.status == "blocked_by_policy"
    assert "127.0.0.1" in (r.detail or "") and "loopback" in (r.detail or "")
    assert r.chain == ()
    assert hellos == 0  # the connection was dropped before any TLS was sent


# --- pure unit tests of the spellings --------------------------------------------------

LEGACY = [
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0x7F.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("10.1", "10.0.0.1"),
    ("1.2.3.4", "1.2.3.4"),
    ("0", "0.0.0.0"),
    ("4294967295", "255.255.255.255"),
    ("00", "0.0.0.0"),
    ("1.0x10.0377.1", "1.16.255.1"),
    ("1.65536", "1.1.0.0"),
]


@pytest.mark.parametrize(("text", "addr"), LEGACY)
def test_parse_legacy_ipv4(text: str, addr: str) -> None:
    assert parse_legacy_ipv4(text) == ipaddress.IPv4Address(addr)
    # inet_aton is the reference these spellings imitate.
    assert socket.inet_ntoa(socket.inet_aton(text)) == addr


@pytest.mark.parametrize(
    "text",
    ["4294967296", "256.0.0.1", "1.2.3.4.5", "08", "09.1", "0x1g", "1..2", "", "a.b", "1.2.3.256", "1.16777216",
     "-1", "1.2.3.-4", "example.com", "0xffffffffff"],
)
def test_parse_legacy_ipv4_rejects(text: str) -> None:
    assert parse_legacy_ipv4(text) is None


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("b\u00fccher.example", "xn--bcher-kva.example"),
        ("\uff41.test", "a.test"),  # full-width letter
        ("a\u3002test", "a.test"),  # ideographic full stop in a name
        ("[2001:DB8::1]", "2001:db8::1"),
        ("::ffff:10.0.0.1", "::ffff:a00:1"),
        # Underscores: allowed in all-ASCII labels (one rule, notary.core.target._to_alabel).
        ("_dmarc.Example.com", "_dmarc.example.com"),
        ("_sip._tcp.example.com", "_sip._tcp.example.com"),
        ("a_b.example", "a_b.example"),
        ("\uff41_b.example", "a_b.example"),  # full-width letter mapped first, then all ASCII
        ("b\u00fccher._x.example", "xn--bcher-kva._x.example"),
    ],
)
def test_normalize_host_names(host: str, canonical: str) -> None:
    assert normalize_host(host) == canonical


@pytest.mark.parametrize(
    "host",
    ["", " 127.0.0.1", "127.0.0.1 ", "127.0.0.1..", "..", ".", "a..b", "fe80::1%eth0", "[::1", "1.2.3.256",
     "256.1.1.1", "1.2.3.4.5", "\uff1a\uff1a1", "exa mple.com", "a" * 64 + ".test", "x" * 250 + ".test", "-a.test",
     "b\u00fc_cher.example", "_-.example", "a" * 63 + "_.test", "a_b-.test"],
)
def test_normalize_host_rejects(host: str) -> None:
    with pytest.raises(InputError) as info:
        normalize_host(host)
    assert info.value.code == "bad_host"


@pytest.mark.parametrize("name", ["_dmarc.example.com", "a_b.example"])
def test_underscore_names_pass_every_check_the_same_way(name: str) -> None:
    """Issue 8, item 12: the label regex allowed ``_`` and IDNA then refused it.  One rule now."""
    t = Target.parse(name, 443)
    assert (t.host, t.sni) == (name, name)
    assert Target.parse("example.com", 443, sni=name).sni == name
    assert normalize_host(t.host) == t.host  # idempotent: a signed host re-normalises to itself


@pytest.mark.parametrize("client,net", [
    ("198.51.100.7", "198.51.100.0/24"),
    ("2001:db8:1:2::/64", "2001:db8:1::/48"),
    ("2001:db8:1:2::5", "2001:db8:1::/48"),
    ("10.0.0.0/8", "10.0.0.0/8"),  # already wider than the grouping prefix: kept
    ("not-an-address", "not-an-address"),
])
def test_network_key_groups_clients_by_network_and_is_stable_when_memoised(client: str, net: str) -> None:
    from notary.core.addrpolicy import network_key
    assert network_key(client) == net
    assert network_key(client) == net  # the memoised answer is the same
