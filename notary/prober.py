"""The prober: connect to a target, complete a TLS handshake, record what was presented.

This is an I/O shell around :mod:`notary.core`.  It resolves the name, applies
the :class:`~notary.core.AddressPolicy` to every resolved address and again to
the connected socket's peer address (so DNS rebinding cannot pass), connects
with SNI, offers TLS 1.2 and 1.3, does *not* validate the chain (it records
what it is shown), and captures the whole presented chain.

The handshake itself is :mod:`notary.tlsprobe`: over an :class:`ssl.MemoryBIO`
pair on a plain TCP stream, counting every byte the server sends: a handshake
that sends more than ``max_handshake_bytes`` is cut off as ``chain_too_large``,
and a server whose first byte is not a TLS record is reported as ``not_tls``.

A failed probe is data: :func:`probe` never raises for network trouble; it
returns :class:`~notary.core.ProbeResult` values with an error status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import socket
from dataclasses import dataclass
from typing import Any, AsyncContextManager, AsyncIterator, Awaitable, Callable, Protocol, Sequence

from notary.core import AddressPolicy, ProbeResult, Target
from notary.core.target import is_ip_literal
from notary.errors import BusyError
from notary.tlsprobe import ProbeFailure, client_context, handshake_over_streams

__all__ = ["Resolver", "SystemResolver", "ProbeLimits", "Prober", "Tunnel"]


class Resolver(Protocol):
    """Turns a host name into IP address strings.  Raises ``OSError`` when it cannot.

    A resolver that remembers answers may also have ``cached_answer(host, port) -> list[str] | None``
    (synchronous, never a lookup): :class:`Prober` asks it first and, on a hit, skips the
    resolution slot and timer (:class:`client.dnscache.CachingResolver`; a notary's resolvers have none).
    """

    async def resolve(self, host: str, port: int) -> list[str]: ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``), A and AAAA, order kept, duplicates dropped.

    Lookups run on a dedicated pool of ``threads`` threads, not asyncio's small
    default pool: a ``getaddrinfo`` cannot be cancelled, so a lookup that timed
    out keeps its thread until the system resolver gives up.  A wide private
    pool keeps slow names from starving other lookups (and everything else
    that uses the default executor).
    """

    _pools: dict[int, concurrent.futures.ThreadPoolExecutor] = {}

    def __init__(self, threads: int = 128) -> None:
        pool = self._pools.get(threads)
        if pool is None:
            pool = self._pools[threads] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="parallax-dns")
        self._pool = pool

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.run_in_executor(
            self._pool, functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        )
        out: list[str] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            ip = str(sockaddr[0])
            if ip not in out:
                out.append(ip)
        return out


class Tunnel(Protocol):
    """A proxy the prober connects through (the client's SOCKS vantages; a notary never uses one).

    ``open(host, port)`` returns a stream to ``host:port`` *through* the proxy.
    With ``remote_dns`` the prober hands it the target's name unresolved (the
    proxy resolves it, SOCKS5h); otherwise the name is resolved here first and
    ``open`` gets an address.  The socket's own peer is the proxy, so the
    prober reports the address it asked for (or none, with ``remote_dns``) and
    does not apply the address policy to the peer: only a client, whose policy
    allows every address, may use a tunnel.
    """

    remote_dns: bool

    async def open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...


@dataclass(frozen=True, slots=True)
class ProbeLimits:
    """Hard limits of one probe.  Seconds and bytes."""

    resolve_timeout: float = 5.0
    connect_timeout: float = 5.0
    handshake_timeout: float = 5.0
    max_handshake_bytes: int = 128 * 1024
    max_addresses: int = 8


Connector = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
#: Admission of a probe of (host, addresses): holds its slots, or raises BusyError.
Admit = Callable[[str, Sequence[str]], AsyncContextManager[None]]
#: Admission of a name lookup: waits for a slot (or raises BusyError) and returns its release.
ResolveSlot = Callable[[], Awaitable[Callable[[], None]]]


@contextlib.asynccontextmanager
async def _admit_all(host: str, ips: Sequence[str]) -> AsyncIterator[None]:
    yield


def _no_release() -> None:
    return None


async def _any_resolve_slot() -> Callable[[], None]:
    return _no_release


def _retrieve(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled():
        task.exception()  # a lookup nobody waits for any more: its error is not "never retrieved"


async def _open(ip: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(ip, port, limit=64 * 1024)


def _connect_failure(exc: OSError, timeout: float) -> ProbeFailure:
    """What a failed connect is reported as."""
    if isinstance(exc, TimeoutError):
        return ProbeFailure("timeout", f"connect timed out after {timeout:g}s")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeFailure("refused", "connection refused")
    status = "unreachable" if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else "refused"
    return ProbeFailure(status, f"connect failed: {exc.strerror or exc}")


class Prober:
    """Probes targets under an address policy and limits.  Reusable and concurrency-safe.

    ``clock`` returns integer unix seconds; ``connector`` opens a TCP stream to
    an IP and port (tests inject one only at the seam where a real connection
    is impossible).  ``connect_override`` maps ``(host, port)`` to ``(ip, port)``
    like curl's ``--connect-to``; it bypasses resolution but not the policy.
    ``tunnel`` (client only, see :class:`Tunnel`) connects through a proxy.
    ``admit`` (the service's :class:`~notary.scheduler.ProbeScheduler`) is entered
    after resolution and the policy check, before any connection; when it raises
    :class:`~notary.errors.BusyError` the result is a ``busy`` observation.
    ``resolve_slot`` (the scheduler's) is awaited before a name is resolved; the
    slot is held until the resolver returns, even past ``resolve_timeout``.  A
    lookup that outlasts ``resolve_timeout`` is ``busy`` (the notary's resolver was
    too slow: not a fact about the target, so it is never stored); a resolver
    still running after four times that is cancelled.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        clock: Callable[[], int],
        resolver: Resolver | None = None,
        limits: ProbeLimits = ProbeLimits(),
        connector: Connector = _open,
        connect_override: dict[tuple[str, int], tuple[str, int]] | None = None,
        tunnel: Tunnel | None = None,
        admit: Admit = _admit_all,
        resolve_slot: ResolveSlot = _any_resolve_slot,
    ) -> None:
        self.admit = admit
        self.resolve_slot = resolve_slot
        self.policy = policy
        self.clock = clock
        self.resolver = resolver or SystemResolver()  # sets _peek too (the property below)
        self.limits = limits
        self.tunnel = tunnel
        self.connector = tunnel.open if tunnel is not None else connector
        self.connect_override = dict(connect_override or {})
        self._ctx = client_context()

    @property
    def resolver(self) -> Resolver:
        return self._resolver

    @resolver.setter
    def resolver(self, resolver: Resolver) -> None:
        # The peek belongs to the resolver in use: replacing the resolver replaces it.
        self._resolver = resolver
        self._peek: Callable[[str, int], list[str] | None] | None = getattr(resolver, "cached_answer", None)

    async def probe(self, target: Target, *, all_addresses: bool = False) -> list[ProbeResult]:
        """Probe ``target``: its first acceptable address, or every A/AAAA address when ``all_addresses``.

        Always returns at least one result; never raises for network failures.
        """
        now = self.clock
        why = self.policy.port_reason(target.port)
        if why:
            return [ProbeResult.failure(target, None, now(), "blocked_by_policy", why)]
        override = self.connect_override.get((target.host, target.port))
        port = target.port
        if override is not None:
            ips, port = [override[0]], override[1]
        elif is_ip_literal(target.host):
            ips = [target.host]
        elif self.tunnel is not None and self.tunnel.remote_dns:
            # The proxy resolves the name (SOCKS5h): no local lookup, and no address to judge here.
            return [await self._probe_ip(target, target.host, port)]
        else:
            try:
                ips = await self._resolve(target)
            except BusyError as exc:
                return [ProbeResult.failure(target, None, now(), "busy", str(exc))]
            except (OSError, UnicodeError) as exc:
                return [ProbeResult.failure(target, None, now(), "dns_failed", f"resolution failed: {exc}")]
            if not ips:
                return [ProbeResult.failure(target, None, now(), "dns_failed", "no addresses")]
        # Every resolved address is checked (a name mixing public and internal
        # answers is refused whole); at most max_addresses are then probed.
        refused = [(ip, self.policy.address_reason(ip)) for ip in ips[:64]]
        allowed = [ip for ip, why in refused if why is None]
        if not allowed:
            # Any refused address makes the name refused: report the first reason.
            return [ProbeResult.failure(target, ips[0], now(), "blocked_by_policy", refused[0][1] or "")]
        if any(why for _, why in refused):
            # A name that mixes public and internal addresses is refused outright:
            # a resolver could otherwise steer a later connection inward.
            bad = next((ip, why) for ip, why in refused if why)
            return [ProbeResult.failure(target, bad[0], now(), "blocked_by_policy", bad[1] or "")]
        allowed = allowed[: self.limits.max_addresses] if all_addresses else allowed[:1]
        try:
            async with self.admit(target.host, allowed):
                if not all_addresses:
                    return [await self._probe_ip(target, allowed[0], port)]
                return list(await asyncio.gather(*(self._probe_ip(target, ip, port) for ip in allowed)))
        except BusyError as exc:
            return [ProbeResult.failure(target, None, now(), "busy", str(exc))]

    async def _resolve(self, target: Target) -> list[str]:
        """Resolve under a resolution slot; BusyError when no slot in time or the lookup is too slow.

        A resolver with a synchronous ``cached_answer(host, port)`` (:class:`client.dnscache.CachingResolver`)
        is asked that first: a fresh remembered answer is no lookup, so it takes no slot, task or timer.
        """
        peek = self._peek
        if peek is not None:
            ips = peek(target.host, target.port)
            if ips is not None:
                return ips
        release = await self.resolve_slot()
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(self.resolver.resolve(target.host, target.port))
        backstop = loop.call_later(4 * self.limits.resolve_timeout, task.cancel)

        def done(_t: "asyncio.Future[Any]") -> None:
            backstop.cancel()
            release()
        task.add_done_callback(done)
        task.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout(self.limits.resolve_timeout):
                return await asyncio.shield(task)  # a timed-out lookup keeps its slot until it returns
        except TimeoutError:
            raise BusyError(f"resolution timed out after {self.limits.resolve_timeout:g}s") from None

    async def _probe_ip(self, target: Target, ip: str, port: int) -> ProbeResult:
        started = self.clock()
        try:
            version, chain, peer = await self._handshake(target, ip, port)
        except ProbeFailure as f:
            shown = ip if self.tunnel is None or is_ip_literal(ip) else None  # a name the proxy was to resolve
            return ProbeResult.failure(target, shown, started, f.status, f.detail)
        return ProbeResult.success(target, peer, started, version, chain)

    async def _handshake(self, target: Target, ip: str, port: int) -> tuple[str, tuple[bytes, ...], str]:
        lim = self.limits
        try:
            async with asyncio.timeout(lim.connect_timeout):
                reader, writer = await self.connector(ip, port)
        except OSError as exc:  # TimeoutError too
            raise _connect_failure(exc, lim.connect_timeout) from None
        try:
            if self.tunnel is not None:
                # The socket's peer is the proxy: report what was asked for (None: a name the proxy resolved).
                peer_ip: str = ip if is_ip_literal(ip) else None  # type: ignore[assignment]
            else:
                peer = writer.get_extra_info("peername")
                peer_ip = str(peer[0]) if peer else ip
                # ``ip`` passed the policy before the connect (probe); a peer that is another
                # address (it should not be) is checked again before anything is read from it.
                why = self.policy.address_reason(peer_ip) if peer_ip != ip else None
                if why:
                    raise ProbeFailure("blocked_by_policy", why)
            try:
                async with asyncio.timeout(lim.handshake_timeout):
                    version, chain = await handshake_over_streams(
                        self._ctx, target.sni, lim.max_handshake_bytes, reader, writer)
            except TimeoutError:
                raise ProbeFailure("timeout", f"TLS handshake timed out after {lim.handshake_timeout:g}s") from None
            return version, chain, peer_ip
        finally:
            writer.transport.abort()
