"""The address policy (SSRF guard): which addresses and ports a notary may probe.

On by default.  A notary refuses to connect to loopback, private (RFC 1918,
ULA), link-local, CGNAT (100.64.0.0/10), multicast, reserved, unspecified,
broadcast, documentation and benchmarking ranges, and to the IPv4-mapped,
IPv4-compatible, 6to4 and NAT64 IPv6 forms of any of them.  The check runs on
every resolved address *and* on the peer address of the connected socket, so a
name that resolves differently the second time (DNS rebinding) cannot pass.

Operators opt in to probing internal ranges with ``allow_networks`` (the CLI's
repeatable ``--allow-network CIDR``); an allowed network wins over the refusal.
Ports are checked against an allowlist (default ``{443}``); ``None`` allows any.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

from notary.errors import ConfigError

__all__ = ["AddressPolicy", "IPAddress", "IPNetwork", "network_key", "refusal_reason", "parse_networks"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4_BLOCKED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link_local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),  # before 240.0.0.0/4, which contains it
    ("240.0.0.0/4", "reserved"),
)
_V6_BLOCKED: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("100::/64", "reserved"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("2001::/23", "reserved"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link_local"),
    ("fec0::/10", "reserved"),
    ("ff00::/8", "multicast"),
)
_V4_NETS = tuple((ipaddress.IPv4Network(n), why) for n, why in _V4_BLOCKED)
_V6_NETS = tuple((ipaddress.IPv6Network(n), why) for n, why in _V6_BLOCKED)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_V4COMPAT = ipaddress.IPv6Network("::/96")
_V4TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 IPv4-translated
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64 or addr in _V4TRANSLATED or (addr in _V4COMPAT and int(addr) > 1):  # :: and ::1 are not IPv4-compatible
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in _SIXTOFOUR:
        return addr.sixtofour
    return None


def refusal_reason(addr: IPAddress) -> str | None:
    """Why ``addr`` is refused by default (``"loopback"``, ``"private"``...), or None if public."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return "link_local"
        inner = _embedded_v4(addr)
        if inner is not None:
            why = refusal_reason(inner)
            return f"{why} (embedded IPv4)" if why else None
        if addr in _NAT64_LOCAL:
            return "reserved"
        for net, why in _V6_NETS:
            if addr in net:
                return why
        if not addr.is_global or addr not in _GLOBAL_UNICAST:
            return "reserved"  # only global unicast (2000::/3) is probed
        return None
    for net4, why in _V4_NETS:
        if addr in net4:
            return why
    if not addr.is_global:
        return "reserved"
    return None


def parse_networks(specs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings; raise :class:`ConfigError` on a bad one."""
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec, strict=False))
        except ValueError:
            raise ConfigError(f"not a network: {spec!r} (expected CIDR such as 10.0.0.0/8)") from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses and ports may be probed.

    ``allow_networks`` are explicit operator opt-ins; ``allowed_ports`` is the port
    allowlist (None: any port).
    """

    allow_networks: tuple[IPNetwork, ...] = ()
    allowed_ports: frozenset[int] | None = field(default_factory=lambda: frozenset({443}))

    def port_reason(self, port: int) -> str | None:
        if self.allowed_ports is None or port in self.allowed_ports:
            return None
        return f"port {port} is not in the notary's port allowlist"

    def address_reason(self, addr: IPAddress | str) -> str | None:
        """None when ``addr`` may be probed, else a one-line reason."""
        if isinstance(addr, str):
            try:
                addr = ipaddress.ip_address(addr.split("%", 1)[0])
            except ValueError:
                return f"not an IP address: {addr!r}"
        check = addr
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            check = addr.ipv4_mapped
        for net in self.allow_networks:
            if check.version == net.version and check in net:
                return None
        why = refusal_reason(addr)
        if why is None:
            return None
        return f"address {addr} is {why}; refused by the notary's address policy"


@functools.lru_cache(maxsize=4096)  # pure; asked per connection and per name lookup, mostly by the same clients
def network_key(client: str) -> str:
    """The network a client key (an address, or an IPv6 /64) belongs to: its IPv4 /24 or IPv6 /48.

    Caps per network (pending connections, name lookups) make one operator's many
    addresses count as one.  A key that is not an address is its own network.
    Memoised (4,096 keys, LRU): a pure function of the string.
    """
    try:
        net = ipaddress.ip_network(client, strict=False)
    except ValueError:
        return client
    prefix = 24 if net.version == 4 else 48
    return str(net.supernet(new_prefix=prefix)) if net.prefixlen > prefix else str(net)
