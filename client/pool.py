"""One reusable HTTP session per event loop for talking to notaries (keep-alive).

A check asks five or so notaries; opening a new session, so new TCP
connections, for every check costs more CPU than the check's own TLS probe.
:func:`shared_session` hands out one :class:`aiohttp.ClientSession` per running
event loop, whose connections to each notary stay open between checks
(``keepalive`` seconds idle, at most ``limit`` connections in all).

Closing: the session is closed by :func:`close_shared_session`, or by itself
when the loop shuts down its async generators (``asyncio.run`` does that before
closing the loop), so a script that never closes it leaves nothing behind.
Callers that manage their own session pass ``session=`` to
:func:`client.api.verify_with_notaries` and this module is not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import AsyncGenerator

import aiohttp

__all__ = ["shared_session", "close_shared_session", "KEEPALIVE", "LIMIT"]

KEEPALIVE = 30.0
LIMIT = 100

_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[None, None]]]" = (
    weakref.WeakKeyDictionary()
)


async def _closer(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Parked async generator: its ``finally`` runs at ``loop.shutdown_asyncgens()``."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await session.close()


def shared_session() -> aiohttp.ClientSession:
    """The running loop's notary session (created on first use; a closed one is replaced)."""
    loop = asyncio.get_running_loop()
    got = _sessions.get(loop)
    if got is not None and not got[0].closed:
        return got[0]
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=LIMIT, keepalive_timeout=KEEPALIVE, enable_cleanup_closed=False),
    )
    gen = _closer(session)
    # Start the generator so the loop tracks it (asyncgen hooks) and closes it at shutdown.
    step = gen.asend(None)
    try:
        step.send(None)
    except StopIteration:
        pass
    _sessions[loop] = (session, gen)
    return session


async def close_shared_session() -> None:
    """Close the running loop's shared session, if any (idempotent)."""
    got = _sessions.pop(asyncio.get_running_loop(), None)
    if got is not None:
        await got[0].close()
        with contextlib.suppress(Exception):
            await got[1].aclose()
