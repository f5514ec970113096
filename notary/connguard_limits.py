"""Connection guard, part one: the limits and what enforcing them needs (see :mod:`notary.connguard`).

:class:`ConnLimits` holds the guard's settings (seconds and counts); :func:`fd_cap`
turns ``max_connections`` into the global cap under the process's ``RLIMIT_NOFILE``
(minus ``fd_reserve`` and ``backlog`` descriptors), and :func:`raise_fd_limit`
raises that soft limit.  :class:`Throttled` is the log that writes at most one
line per kind per ``log_interval`` seconds.  The refusal answers (a short JSON
429 or 503, ``Connection: close``) are written straight to a refused socket, and
``_client_of`` is the key the per-client cap counts by (an IPv6 client by its /64).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["ConnLimits", "Throttled", "fd_cap", "raise_fd_limit"]


@dataclass(frozen=True, slots=True)
class ConnLimits:
    """Seconds and counts.  ``fd_reserve`` descriptors are kept out of the connection cap.

    ``max_pending_per_net``: connections per IPv4 /24 or IPv6 /48 that have not yet
    delivered their first request head.  ``evict_after``: seconds a connection must
    have waited (for a head, or idle between requests) before it may be evicted to
    make room at the global cap.
    """

    head_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_per_client: int = 32
    max_pending_per_net: int = 64
    evict_after: float = 5.0
    max_connections: int = 4096
    fd_reserve: int = 256
    backlog: int = 128
    log_interval: float = 10.0


def fd_cap(max_connections: int, fd_reserve: int, backlog: int) -> int:
    """The global connection cap under this process's ``RLIMIT_NOFILE`` soft limit (at least 8).

    Besides ``fd_reserve``, ``backlog`` descriptors stay free for evicted connections,
    each of which holds its descriptor until the next loop turn (see :class:`Acceptor`).
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    reserve = min(fd_reserve, soft // 4)  # a tiny limit still leaves most of it for clients
    return min(max_connections, max(8, soft - reserve - backlog))


def raise_fd_limit(target: int = 65536) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``target`` (never above the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


class Throttled:
    """A log that writes at most one line per key per ``interval`` seconds, with the count it folded."""

    def __init__(self, logger: logging.Logger, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def warning(self, key: str, message: str) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._folded[key] = self._folded.get(key, 0) + 1
            return
        self._last[key] = now
        folded = self._folded.pop(key, 0)
        suffix = f" ({folded} more like it in the last {self.interval:g}s)" if folded else ""
        self.logger.warning("%s%s", message, suffix)


def _answer(status: int, phrase: str, code: str, reason: str) -> bytes:
    body = json.dumps({"error": code, "reason": reason}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_TOO_MANY_CLIENT = _answer(429, "Too Many Requests", "too_many_connections",
                           "this client address holds too many connections")
_TOO_MANY_NET = _answer(429, "Too Many Requests", "too_many_connections",
                        "this client network holds too many connections awaiting a request")
_TOO_MANY_GLOBAL = _answer(503, "Service Unavailable", "unavailable", "the notary is at its connection limit")


def _client_of(peer: Any) -> str:
    try:
        addr = ipaddress.ip_address(str(peer[0]).split("%")[0])
    except (TypeError, IndexError, ValueError):
        return "?"
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    if addr.version == 6:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)
