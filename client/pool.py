"""Kept-alive HTTP/1.1 connections to notaries: the client's default :class:`~client.transport.Transport`.

A check asks five or so notaries; an aiohttp request costs more CPU than
reading and verifying the notary's answer, and a new connection per check
costs more than the check's own TLS probe.  :class:`NotaryPool` keeps
connections to each notary open between checks and speaks just enough HTTP/1.1
(:mod:`client.http1`) over an :class:`asyncio.BufferedProtocol`.

Theory of operation
-------------------
* One request at a time per connection.  A request takes an idle connection
  to the same origin (scheme, host, port; most recently used first) or opens
  one: TCP, then for ``https`` TLS with the pool's context (by default
  :func:`ssl.create_default_context`: certificate and host name verified).
* At most ``limit`` connections in all (open, opening or finishing an
  abandoned answer); at the limit an idle connection to another origin is
  closed, else one finishing an abandoned answer, or the request waits for
  one to be freed.
* A connection idle for ``keepalive`` seconds is never reused and is closed
  (a sweep every ``keepalive / 2`` seconds); one the server closes is dropped
  at once (its EOF arrives while idle).
* Stale connection race: a server may close an idle connection just as a
  request is written to it.  When a *reused* connection closes before a single
  byte of the answer arrived, the request is sent once more on a newly opened
  connection (never another idle one), never more often.  Every request the client makes is safe to
  resend: ``GET /v1/notary``, ``POST /v1/observe`` (read-only for the notary;
  the answer is bound to the request's own nonce, so a second answer to the
  same request is just as good) and the relay's encrypted ``POST`` (HPKE: the
  gateway decrypts and answers it again, with the same key material).
* Timeouts are the caller's (``asyncio.timeout`` around :meth:`request`), with
  a backstop of ``deadline`` seconds (:data:`REQUEST_DEADLINE`) per request: a
  request still unanswered then fails with :class:`TimeoutError` (its
  connection is closed).  A request on a kept-alive connection (the usual case)
  is bounded by one watchdog timer per pool, armed for the earliest deadline of
  the requests in flight, not by a timer of its own; one that waits for a slot
  or opens a connection is bounded by ``asyncio.timeout`` as well.  A
  request cancelled after it was written (a timeout, or an early decision
  that no longer needs that notary) leaves its connection to finish reading
  the answer for at most :data:`DRAIN_SECONDS`; a complete answer returns the
  connection to the pool (no new handshake next time), else it is closed.
* Redirects are responses (never followed); bodies over ``max_body`` bytes,
  malformed answers and compressed ones are :class:`~client.http1.HttpProtocolError`.

:func:`shared_pool` hands out one pool per running event loop; it is closed by
:func:`close_shared_pool`, or by itself when the loop shuts down its async
generators (``asyncio.run`` does that before closing the loop), so a script
that never closes it leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import AsyncGenerator

# The connection (client._pool_conn) and the pool (client._notary_pool) live in their own
# modules; this one is their public face and the shared pool per event loop.  Code reads a
# constant from the module that defines it: patch client._pool_conn.DRAIN_SECONDS, say,
# not this module's re-exported copy.
from client._notary_pool import KEEPALIVE, LIMIT, REQUEST_DEADLINE, NotaryPool
from client._notary_pool import _default_tls as _default_tls, _origin as _origin
from client._pool_conn import DRAIN_SECONDS, READ_BUFFER, ConnectionClosed
from client._pool_conn import _Conn as _Conn

__all__ = ["NotaryPool", "ConnectionClosed", "shared_pool", "close_shared_pool", "KEEPALIVE", "LIMIT", "DRAIN_SECONDS",
           "REQUEST_DEADLINE", "READ_BUFFER"]


_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[NotaryPool, AsyncGenerator[None, None]]]" = (
    weakref.WeakKeyDictionary()
)


async def _closer(pool: NotaryPool) -> AsyncGenerator[None, None]:
    """Parked async generator: its ``finally`` runs at ``loop.shutdown_asyncgens()``."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await pool.close()


def shared_pool() -> NotaryPool:
    """The running loop's notary connection pool (created on first use; a closed one is replaced)."""
    loop = asyncio.get_running_loop()
    got = _pools.get(loop)
    if got is not None and not got[0].closed:
        return got[0]
    pool = NotaryPool()
    gen = _closer(pool)
    # Start the generator so the loop tracks it (asyncgen hooks) and closes it at shutdown.
    step = gen.asend(None)
    try:
        step.send(None)
    except StopIteration:
        pass
    _pools[loop] = (pool, gen)
    return pool


async def close_shared_pool() -> None:
    """Close the running loop's shared pool, if any (idempotent)."""
    got = _pools.pop(asyncio.get_running_loop(), None)
    if got is not None:
        await got[0].close()
        with contextlib.suppress(Exception):
            await got[1].aclose()
