"""``parallax serve --workers N``: N notary processes sharing one port and one store.

Theory of operation
-------------------
Python runs one event loop per process on one core, so a notary uses more
cores by running more processes.  The parent process forks ``N`` workers (the
signing key and configuration are loaded once, before the fork); each worker
opens its *own* listening socket on the same address with ``SO_REUSEPORT``,
so the kernel spreads incoming connections across the workers, and runs an
ordinary notary app (:func:`notary.server.create_app`) on it.  The parent only
supervises: it forwards SIGTERM/SIGINT to every worker, and if one worker
exits on its own, it stops the others and exits with status 1 (a service
manager restarts the whole group; a half-dead group is never left serving).

Shared state:

* **The store** is one SQLite file in WAL mode, opened by every worker.  Each
  worker keeps its single writer thread and its group commit; *across*
  workers, SQLite's own file lock serialises the writers: ``BEGIN IMMEDIATE``
  waits for the write lock under ``busy_timeout`` (5 s) instead of failing, and
  readers never block in WAL mode, so every worker sees the others' committed
  probes (its in-memory cache aside, which only ever holds rounds younger than
  the TTL).
* **Keys**: the signing key is loaded once, before the fork; the Oblivious
  HTTP gateway keys are created (if absent) by the parent, so every worker
  reads and advertises the same ones.
* **Per-process state** is not shared: the in-memory cache, in-flight probe
  sharing, the rate limiter (a client gets up to ``N`` times the per-client
  rate), the probe caps (``N`` times the global cap), ``/metrics`` (each worker
  counts its own requests; a scrape sees one worker).  The ``--watch`` re-scan
  runs in worker 0 only.

Linux (and the BSDs) balance connections across ``SO_REUSEPORT`` sockets; the
option is required, so ``--workers`` above 1 fails cleanly where it is missing.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Callable

from notary import eventloop
from notary.config import NotaryConfig
from notary.core import SigningKey
from notary.errors import ConfigError

__all__ = ["serve_workers", "reuseport_socket", "default_workers", "MAX_WORKERS"]

log = logging.getLogger("parallax.notary")

MAX_WORKERS = 64


def default_workers() -> int:
    """The number of CPU cores this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def reuseport_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` with ``SO_REUSEPORT`` (and listening, by default)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers above 1 needs SO_REUSEPORT, which this system lacks")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:  # e.g. address already in use: an I/O error (exit 74), like a single notary's
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}") from None
    return sock


def _die_with_parent() -> None:
    """Linux: ask for SIGTERM when the parent dies (even by SIGKILL), so no worker is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM handler still stops workers
        pass


def _worker(index: int, config: NotaryConfig, key: SigningKey, host: str, port: int, placeholder: socket.socket,
            parent: int, ready: int, options: dict[str, Any]) -> None:
    """One worker process: its own SO_REUSEPORT socket, one notary app, until SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (inherited by fork)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM ends a worker
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        return
    placeholder.close()
    from notary.errors import ParallaxError

    try:
        _run_worker(index, config, key, host, port, ready=ready, **options)
    except (ParallaxError, OSError) as exc:  # one line, no traceback; the parent then stops the group
        print(f"parallax: worker {index}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


def _run_worker(index: int, config: NotaryConfig, key: SigningKey, host: str, port: int, *,
                ready: int, relay: Any = None, access_log: bool = False) -> None:
    from notary.connguard import raise_fd_limit
    from notary.server import GUARD, WORKER, create_app
    from notary.serving import serve_app

    if index > 0:
        config = dataclasses.replace(config, watch=())  # the re-scan runs once, in worker 0
    raise_fd_limit()  # before the guard sizes its connection cap from the limit
    sock = reuseport_socket(host, port)
    app = create_app(config, key, relay=relay)
    app[WORKER] = index
    # The same serving path as a single notary: the connection guard and JSON parse errors.
    def listening(_addr: tuple[str, int]) -> None:
        os.write(ready, b"1")  # tell the parent: this worker accepts connections now
        os.close(ready)

    eventloop.run(serve_app(app, host, port, app[GUARD], listening, sock=sock,
                            access_log=logging.getLogger("aiohttp.access") if access_log else None))


def _await_ready(fd: int, workers: int, procs: list[Any], stopping: Callable[[], bool]) -> bool:
    """Until ``workers`` readiness bytes arrived on ``fd`` (True), or a worker exited or a stop
    was asked for first (False; the supervision loop then stops the group)."""
    got = 0
    while got < workers:
        if stopping() or any(not p.is_alive() for p in procs):
            return False
        readable, _, _ = select.select([fd], [], [], 0.2)
        if readable:
            chunk = os.read(fd, workers)
            if not chunk:  # every write end closed: a worker died before it said so
                return False
            got += len(chunk)
    return True


def serve_workers(config: NotaryConfig, key: SigningKey, host: str, port: int, workers: int, *,
                  relay: Any = None, access_log: bool = False,
                  on_bound: Callable[[tuple[str, int]], None] | None = None,
                  on_ready: Callable[[tuple[str, int]], None] | None = None) -> int:
    """Run ``workers`` notary processes on ``host:port`` until SIGTERM/SIGINT; returns the exit status.

    ``relay``, ``access_log`` and ``on_bound`` are those of :func:`notary.server.run`: ``on_bound``
    runs in this process once the address is held, before the workers start (so whatever it
    writes exists before any worker answers, e.g. a health check).  ``on_ready`` runs once every
    worker is listening (each tells the parent through a pipe), so whoever waits for it
    (``parallax serve`` prints ``listening`` then) can connect at once.  If a worker exits
    first, ``on_ready`` never runs and the group stops (status 1).
    """
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be from 1 to {MAX_WORKERS}")
    # Check the store and the address now (a clean error instead of N failing children),
    # and hold the address: a bound, non-listening member of the group receives no connections.
    from notary.ohttp_gateway import load_gateway_keys
    from notary.store import prepare_store

    prepare_store(config.db_path)
    placeholder = reuseport_socket(host, port, listen=False)
    port = placeholder.getsockname()[1]
    # Created once, here (only once the address is held: a serve that cannot bind writes no keys);
    # every worker then reads the same gateway keys.
    load_gateway_keys(config.data_dir)
    if config.url is None:  # advertise the port actually bound (``--listen HOST:0``)
        from notary.server import listen_url

        config = dataclasses.replace(config, url=listen_url(host, port))
    bound = (str(placeholder.getsockname()[0]), port)
    if on_bound is not None:
        on_bound(bound)
    ctx = multiprocessing.get_context("fork")
    ready_r, ready_w = os.pipe()
    procs: list[Any] = []
    stopping = False

    def stop_all(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive():
                p.terminate()

    old = {s: signal.signal(s, stop_all) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for i in range(workers):
            p = ctx.Process(target=_worker, args=(i, config, key, host, port, placeholder, os.getpid(), ready_w,
                                                  {"relay": relay, "access_log": access_log}),
                            name=f"parallax-worker-{i}", daemon=False)
            p.start()
            procs.append(p)
        os.close(ready_w)
        ready_w = -1
        if _await_ready(ready_r, workers, procs, lambda: stopping) and on_ready is not None:
            on_ready(bound)
        log.info("serving on %s:%d with %d workers (pids %s)", host, port, workers, [p.pid for p in procs])
        while not stopping:
            dead = [p for p in procs if not p.is_alive()]
            if dead:
                log.error("worker %s exited with %s; stopping the others", dead[0].name, dead[0].exitcode)
                status = 1
                stop_all()
                break
            time.sleep(0.2)
    finally:
        for fd in (ready_r, ready_w):
            if fd >= 0:
                os.close(fd)
        stop_all()
        deadline = time.monotonic() + 10
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        placeholder.close()
        for s, h in old.items():
            signal.signal(s, h)
    sys.stdout.flush()
    return status
