"""Vantage points over SOCKS5: probe the target through a proxy the user names.

``parallax check HOST --via socks5://127.0.0.1:1080 --via socks5h://127.0.0.1:9050``
probes the target once through each proxy (an ``ssh -D`` tunnel to a machine
the user owns, Tor, any SOCKS5 proxy) with the *same* prober the client uses
for its own probe (:class:`notary.prober.Prober` over a :class:`SocksTunnel`),
so the handshake, limits and chain capture are one implementation.

``socks5://``   the name is resolved here, and the proxy is asked to connect
                to the address (what *this* resolver says, seen from there);
``socks5h://``  the proxy resolves the name (a DNS attack on this machine's
                resolver shows up as a different key or address).

Stream isolation (Tor's ``IsolateSOCKSAuth``, on by default in Tor): unless
the URL carries credentials, every probe sends a fresh random SOCKS
username/password, so each ``--via`` (and each check) gets its own circuit and
so, usually, its own exit.  Proxies that do not ask for authentication ignore
the offer (the client offers "no authentication" as well).

A proxy's answer is unsigned: the result is a :class:`~client.evidence.ProxyView`
that the verdict engine labels as such (see :mod:`client.evidence`).  A proxy
that cannot be reached, refuses the client or speaks something else is that
vantage's failure (``proxy_failed``), data and never an exception; a proxy that
cannot reach the target reports the target as ``unreachable``/``refused``/``timeout``
from there, like a notary's failed probe.  The SOCKS protocol itself is spoken
by python-socks (a maintained client), not by this module.
"""

from __future__ import annotations

import asyncio
import errno
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import unquote, urlsplit

from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio import Proxy

from notary.core import AddressPolicy, Target, parse_networks
from notary.core.target import is_ip_literal, normalize_host
from notary.errors import InputError
from notary.prober import ProbeLimits, Prober
from client.evidence import ProxyView

__all__ = ["ProxySpec", "SocksTunnel", "parse_via", "probe_via", "probe_all_via", "MAX_VIAS", "ANY_ADDRESS"]

#: At most this many proxies per check (each is one TCP connection and one handshake).
MAX_VIAS = 16
#: The client's own probes (direct or through a proxy) may reach every address, any port: its browser would.
ANY_ADDRESS = AddressPolicy(parse_networks(["0.0.0.0/0", "::/0"]), None)
#: SOCKS5 reply codes that say the *target* could not be reached from the proxy -> (status, errno).
_TARGET_REPLIES = {3: ("unreachable", errno.ENETUNREACH), 4: ("unreachable", errno.EHOSTUNREACH),
                   5: ("refused", errno.ECONNREFUSED), 6: ("timeout", errno.ETIMEDOUT)}


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """One ``--via`` proxy.  ``label`` (never the credentials) names it in verdicts and logs."""

    scheme: str  # socks5 | socks5h
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def remote_dns(self) -> bool:
        return self.scheme == "socks5h"

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __repr__(self) -> str:  # credentials stay out of reprs, tracebacks and logs
        return f"ProxySpec({self.label!r}, credentials={'yes' if self.username else 'no'})"


def parse_via(text: str | ProxySpec) -> ProxySpec:
    """``socks5[h]://[user:pass@]host:port`` -> :class:`ProxySpec`.  Raises :class:`InputError` (``bad_via``)."""
    if isinstance(text, ProxySpec):
        return text
    if not isinstance(text, str) or len(text) > 2048:
        raise InputError("a proxy must be a socks5:// or socks5h:// URL", "bad_via")
    try:
        u = urlsplit(text.strip())
        port = u.port
    except ValueError as exc:
        raise InputError(f"bad proxy URL: {exc}", "bad_via") from None
    if u.scheme not in ("socks5", "socks5h"):
        raise InputError(f"proxy URL scheme must be socks5 or socks5h, not {u.scheme or 'none'!r}", "bad_via")
    if not u.hostname or port is None or not 1 <= port <= 65535:
        raise InputError("proxy URL needs a host and a port (socks5h://127.0.0.1:9050)", "bad_via")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise InputError("proxy URL takes no path, query or fragment", "bad_via")
    host = u.hostname if is_ip_literal(u.hostname) else normalize_host(u.hostname)
    user = unquote(u.username) if u.username is not None else None
    password = unquote(u.password) if u.password is not None else None
    if (user is None) != (password is None) or (user is not None and not (0 < len(user) < 256 and 0 < len(password or "") < 256)):
        raise InputError("proxy credentials must be user:password, each 1-255 bytes", "bad_via")
    return ProxySpec(u.scheme, host, port, user, password)


class SocksTunnel:
    """A :class:`notary.prober.Tunnel` through one SOCKS5 proxy, for one probe.

    After a failed probe, :attr:`proxy_failure` says whether the proxy itself
    failed (could not be reached, refused the client, not SOCKS5), as opposed
    to the target being unreachable from the proxy.
    """

    def __init__(self, spec: ProxySpec, *, timeout: float, isolate: bool = True) -> None:
        self.spec = spec
        self.remote_dns = spec.remote_dns
        self.timeout = timeout
        user, password = spec.username, spec.password
        if user is None and isolate:
            user, password = "parallax", secrets.token_urlsafe(12)  # a fresh Tor circuit per probe
        self._proxy = Proxy(ProxyType.SOCKS5, spec.host, spec.port, user, password, rdns=spec.remote_dns)
        self.proxy_failure: str | None = None

    async def open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            sock = await self._proxy.connect(host, port, timeout=self.timeout)
        except ProxyTimeoutError:
            # The proxy, or the target from there, is slow or silent: a timeout of this vantage's probe.
            raise TimeoutError(f"no answer through the proxy within {self.timeout:g}s") from None
        except ProxyConnectionError as exc:
            self.proxy_failure = f"cannot connect to the proxy: {exc.strerror or exc}"
            raise OSError(errno.ECONNREFUSED, self.proxy_failure) from None
        except ProxyError as exc:
            code = exc.error_code
            if code in _TARGET_REPLIES:
                status, err = _TARGET_REPLIES[code]
                if status == "refused":
                    raise ConnectionRefusedError(err, f"the proxy says: {exc}") from None
                if status == "timeout":
                    raise TimeoutError(f"the proxy says: {exc}") from None
                raise OSError(err, f"the proxy could not reach the target: {exc}") from None
            self.proxy_failure = f"the proxy refused the request: {exc}"
            raise OSError(errno.ECONNREFUSED, self.proxy_failure) from None
        except OSError as exc:  # e.g. the proxy closed the connection mid-negotiation
            self.proxy_failure = f"SOCKS negotiation failed: {exc.strerror or exc}"
            raise OSError(errno.ECONNRESET, self.proxy_failure) from None
        try:
            return await asyncio.open_connection(sock=sock, limit=64 * 1024)
        except BaseException:
            sock.close()
            raise


async def probe_via(
    target: Target,
    spec: ProxySpec,
    *,
    timeout: float = 5.0,
    isolate: bool = True,
    clock: Callable[[], float] = time.time,
) -> ProxyView:
    """Probe ``target`` through one proxy with the client's prober.  Never raises for network trouble."""
    tunnel = SocksTunnel(spec, timeout=timeout, isolate=isolate)
    prober = Prober(ANY_ADDRESS, clock=lambda: int(clock()), tunnel=tunnel,
                    limits=ProbeLimits(connect_timeout=timeout, handshake_timeout=timeout))
    result = (await prober.probe(target))[0]
    if tunnel.proxy_failure is not None:
        return ProxyView(spec.label, "proxy_failed", detail=tunnel.proxy_failure, remote_dns=spec.remote_dns)
    return ProxyView(spec.label, result.status, result.spki_sha256, result.ip, result.detail, remote_dns=spec.remote_dns)


async def probe_all_via(
    target: Target,
    specs: Sequence[ProxySpec],
    *,
    timeout: float = 5.0,
    isolate: bool = True,
    clock: Callable[[], float] = time.time,
) -> list[ProxyView]:
    """One :class:`ProxyView` per proxy, in order, probed concurrently (each under ``timeout`` seconds)."""
    if len(specs) > MAX_VIAS:
        raise InputError(f"at most {MAX_VIAS} proxies per check", "bad_via")
    return list(await asyncio.gather(*(probe_via(target, s, timeout=timeout, isolate=isolate, clock=clock) for s in specs)))
