"""The event loop Parallax's own entry points run on: uvloop where it is installed, else asyncio's.

Every command of the ``parallax`` CLI (the notary, its workers, the relay, the
browser helper's native host, ``check``) and the synchronous
:func:`client.api.verify_with_notaries_sync` start their loop through
:func:`run`.  The library's coroutines (``verify_with_notaries``) run on
whatever loop their caller runs; nothing here installs a global policy.

uvloop (libuv, in Cython) is a dependency on Linux and macOS.  Measured here in
one run against asyncio's loop (``bench/event_loop.py``, three runs on 2 cores):
a notary's cold probes/s x1.10-1.23, a warm check's client CPU x0.81-0.93 and its
latency x0.86-1.02.  The environment variable
``PARALLAX_LOOP`` chooses: ``auto`` (the default: uvloop if it imports, else
asyncio), ``uvloop`` (an error if it is missing) or ``asyncio`` (the standard
library's loop, the fallback an operator can always take).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from notary.errors import ConfigError

__all__ = ["LOOPS", "ENV", "TIMER_SLACK", "chosen", "loop_factory", "run"]

ENV = "PARALLAX_LOOP"
LOOPS = ("auto", "uvloop", "asyncio")
T = TypeVar("T")

#: Seconds early a deadline timer may run and still count as due.  uvloop keeps ``loop.time()``
#: in whole milliseconds and rounds ``call_at`` delays to them, so a timer can run a fraction of
#: a millisecond before its deadline; re-arming it for that fraction would run it again on every
#: loop pass until the clock ticks (the connection guard's and the client pool's deadline timers).
TIMER_SLACK = 0.001


def chosen(name: str | None = None) -> str:
    """The loop ``name`` (default: ``$PARALLAX_LOOP``, else ``auto``) resolves to: ``"uvloop"`` or ``"asyncio"``.

    Raises :class:`~notary.errors.ConfigError` for a name not in :data:`LOOPS`, or
    ``uvloop`` asked for by name where it does not import (``auto`` then falls back to asyncio).
    """
    want = (os.environ.get(ENV) or "auto") if name is None else name
    if want not in LOOPS:
        raise ConfigError(f"{ENV} must be one of {', '.join(LOOPS)}, not {want!r}")
    if want == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except (ImportError, OSError) as exc:  # not installed, or a build that does not load here
        if want == "uvloop":
            raise ConfigError(f"{ENV}=uvloop, but uvloop does not import: {exc}") from None
        return "asyncio"
    return "uvloop"


def loop_factory(name: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop :func:`chosen` picks; None stands for asyncio's own (its policy's loop)."""
    if chosen(name) == "asyncio":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], *, loop: str | None = None) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` chooses (``loop``, else ``$PARALLAX_LOOP``)."""
    try:
        factory = loop_factory(loop)
    except BaseException:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
