"""The client's short-lived name cache (client.dnscache) and its use by the client's own probe.

The unit tests answer names with a recording resolver: a seam fake, since real DNS
cannot be steered from a test; the probe test uses the real system resolver
(``localhost``) and a real loopback TLS site.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

import client.api as api
from client.dnscache import CachingResolver
from client.devtools import make_cert_context, tls_site
from notary.core import Target


def _forget_names() -> None:
    resolver = getattr(api, "_resolver", None)
    if resolver is not None:
        resolver.clear()


class Recording:
    """Answers from a table and records every question (names not in it fail like getaddrinfo)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_answer_reused_within_ttl_then_asked_again() -> None:
    inner, clock = Recording({"a.test": ["192.0.2.1", "2001:db8::1"]}), Clock()
    r = CachingResolver(inner, ttl=5.0, clock=clock)
    assert await r.resolve("a.test", 443) == ["192.0.2.1", "2001:db8::1"]
    clock.t += 4.9
    got = await r.resolve("a.test", 443)
    assert got == ["192.0.2.1", "2001:db8::1"]
    got.append("mutated")  # a caller's list is its own
    assert inner.calls == [("a.test", 443)]
    clock.t += 0.1  # exactly the TTL: expired
    inner.table["a.test"] = ["192.0.2.9"]
    assert await r.resolve("a.test", 443) == ["192.0.2.9"]
    assert inner.calls == [("a.test", 443)] * 2


async def test_cached_answer_is_a_lookup_free_peek() -> None:
    """``cached_answer`` answers only from memory: None before a lookup and once the TTL passed."""
    inner, clock = Recording({"a.test": ["192.0.2.1"]}), Clock()
    r = CachingResolver(inner, ttl=5.0, clock=clock)
    assert r.cached_answer("a.test", 443) is None
    await r.resolve("a.test", 443)
    got = r.cached_answer("a.test", 443)
    assert got == ["192.0.2.1"]
    got.append("mutated")  # a caller's list is its own
    assert r.cached_answer("a.test", 443) == ["192.0.2.1"]
    assert r.cached_answer("a.test", 8443) is None
    clock.t += 5.0
    assert r.cached_answer("a.test", 443) is None
    assert inner.calls == [("a.test", 443)]


async def test_prober_takes_no_resolution_slot_for_a_remembered_answer() -> None:
    """A fresh remembered answer is no lookup: the prober skips the slot (here, one that is never
    free); a name not remembered still waits for a slot, and is ``busy`` when it gets none."""
    from notary.errors import BusyError
    from notary.prober import Prober
    from client.socks import ANY_ADDRESS

    slots: list[str] = []

    async def no_slot() -> Any:
        slots.append("asked")
        raise BusyError("no resolution slot free")

    clock = Clock()
    resolver = CachingResolver(Recording({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]}), clock=clock)
    await resolver.resolve("a.test", 1)
    prober = Prober(ANY_ADDRESS, clock=lambda: 1000, resolver=resolver, resolve_slot=no_slot)
    # Port 1 on loopback: refused at once (a fact about the target, reached only after resolution).
    remembered = await prober.probe(Target.parse("a.test", 1))
    assert [r.status for r in remembered] == ["refused"] and slots == []
    unknown = await prober.probe(Target.parse("b.test", 1))
    assert [r.status for r in unknown] == ["busy"] and slots == ["asked"]
    clock.t += 5.0  # expired: a lookup again, under a slot
    assert [r.status for r in await prober.probe(Target.parse("a.test", 1))] == ["busy"]
    assert slots == ["asked", "asked"]
    # A replaced resolver brings its own memory: the old one's answers are not peeked at any more.
    fresh = CachingResolver(Recording({"b.test": ["127.0.0.1"]}), clock=clock)
    await fresh.resolve("b.test", 1)
    await resolver.resolve("a.test", 1)  # remembered again by the old resolver only
    prober.resolver = fresh
    assert [r.status for r in await prober.probe(Target.parse("b.test", 1))] == ["refused"]
    assert [r.status for r in await prober.probe(Target.parse("a.test", 1))] == ["busy"]
    assert slots == ["asked", "asked", "asked"]


async def test_keyed_by_host_and_port() -> None:
    inner = Recording({"a.test": ["192.0.2.1"], "b.test": ["192.0.2.2"]})
    r = CachingResolver(inner, clock=Clock())
    await r.resolve("a.test", 443)
    await r.resolve("a.test", 8443)
    assert await r.resolve("b.test", 443) == ["192.0.2.2"]
    assert inner.calls == [("a.test", 443), ("a.test", 8443), ("b.test", 443)]


async def test_failures_and_empty_answers_are_not_cached() -> None:
    inner, clock = Recording({"empty.test": []}), Clock()
    r = CachingResolver(inner, clock=clock)
    for _ in range(2):
        with pytest.raises(OSError):
            await r.resolve("missing.test", 443)
        assert await r.resolve("empty.test", 443) == []
    assert inner.calls == [("missing.test", 443), ("empty.test", 443)] * 2


async def test_bounded_oldest_evicted() -> None:
    inner = Recording({f"n{i}.test": [f"192.0.2.{i}"] for i in range(5)})
    r = CachingResolver(inner, size=3, clock=Clock())
    for i in range(5):
        await r.resolve(f"n{i}.test", 443)
    await r.resolve("n4.test", 443)  # kept
    await r.resolve("n0.test", 443)  # evicted: asked again
    assert inner.calls[5:] == [("n0.test", 443)]


async def test_ttl_zero_caches_nothing() -> None:
    inner = Recording({"a.test": ["192.0.2.1"]})
    r = CachingResolver(inner, ttl=0, clock=Clock())
    await r.resolve("a.test", 443)
    await r.resolve("a.test", 443)
    assert len(inner.calls) == 2


async def test_client_probe_resolves_a_name_once_per_ttl_but_handshakes_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two probes of ``localhost`` in a row: one system lookup, two handshakes."""
    real = socket.getaddrinfo
    lookups: list[Any] = []

    def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    _forget_names()
    async with tls_site(make_cert_context("localhost"), host="127.0.0.1") as site:
        target = Target.parse("localhost", site.port)
        first = await api.client_probe(target, timeout=5)
        second = await api.client_probe(target, timeout=5)
    assert first.status == second.status == "ok", (first, second)
    assert first.spki_sha256 == second.spki_sha256
    assert lookups.count("localhost") == 1  # the second probe still made its own handshake ("ok" above)
    _forget_names()


@pytest.mark.parametrize("addr", ["127.0.0.1", "10.0.0.1", "::1", "fe80::1%eth0", "::ffff:192.0.2.1", "203.0.113.9",
                                  "not-an-ip", "", "999.1.1.1", "localhost"])
def test_the_probe_policy_answers_as_the_allow_everything_address_policy(addr: str) -> None:
    """The client's own probe allows every address, any port: its policy answers as a plain
    AddressPolicy allowing everything, every time (a string that is not an address stays refused)."""
    import ipaddress

    from client.socks import ANY_ADDRESS as _ANY
    from notary.core import AddressPolicy, parse_networks

    plain = AddressPolicy(parse_networks(["0.0.0.0/0", "::/0"]), None)
    for _ in range(2):
        assert _ANY.address_reason(addr) == plain.address_reason(addr)
    if addr in ("127.0.0.1", "::1"):
        assert _ANY.address_reason(ipaddress.ip_address(addr)) is None
    assert _ANY.port_reason(8443) is None
