"""Slowloris and malformed HTTP against a real notary on loopback (issue 8, items 1, 5 and 6).

Every test talks to the real server (aiohttp behind :class:`notary.serving.GuardedSite`)
over real sockets; the slow clients trickle real bytes.  Distinct client
addresses are distinct 127.x.y.z source addresses (all of 127/8 is loopback on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from notary.config import NotaryConfig
from notary.connguard import ConnectionGuard, ConnLimits, Throttled, _Guarded
from notary.core import SigningKey
from notary.server import GUARD, create_app
from notary.serving import serve_app
from tests.support.proc import stop

NONCE = "guard-test-nonce-0001"


@contextlib.asynccontextmanager
async def guarded(cfg: NotaryConfig) -> AsyncIterator[tuple[int, ConnectionGuard]]:
    app = create_app(cfg, SigningKey.generate())
    bound: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    halt = asyncio.Event()
    task = asyncio.create_task(serve_app(app, "127.0.0.1", 0, app[GUARD], bound.set_result, stop=halt))
    try:
        _, port = await asyncio.wait_for(asyncio.shield(bound), 10)
        yield port, app[GUARD]
    finally:
        halt.set()
        await asyncio.wait_for(task, 20)


async def _open(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _request(port: int, raw: bytes, source: str = "127.0.0.1", timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send ``raw`` on a new connection; return (status, headers, body) of the answer."""
    reader, writer = await _open(port, source)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body
    finally:
        writer.close()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
        return True
    except (TimeoutError, ConnectionError):
        return isinstance(asyncio.current_task(), asyncio.Task) and reader.at_eof()


def _cfg(tmp_path: Path, **conn: float) -> NotaryConfig:
    return NotaryConfig(data_dir=tmp_path, conn_limits=replace(ConnLimits(), **conn))  # type: ignore[arg-type]


# -- 1. slowloris -----------------------------------------------------------------------

async def test_a_trickled_request_head_is_closed_at_the_head_deadline(tmp_path: Path) -> None:
    async with guarded(_cfg(tmp_path, head_timeout=1.0)) as (port, guard):
        reader, writer = await _open(port)
        started = time.monotonic()
        closed = False
        for ch in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                writer.write(bytes([ch]))
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if reader.at_eof():
                closed = True
                break
            await asyncio.sleep(0.05)
            if time.monotonic() - started > 5:
                break
        if not closed:
            closed = await _closed_within(reader, 3)
        writer.close()
        assert closed, "a connection trickling its head stayed open past the deadline"
        assert time.monotonic() - started < 4
        assert guard.closed["head"] == 1
        assert guard.open == 0


async def test_a_silent_new_connection_is_closed_and_a_kept_alive_one_after_idle(tmp_path: Path) -> None:
    async with guarded(_cfg(tmp_path, head_timeout=0.5, idle_timeout=1.0)) as (port, guard):
        silent_r, silent_w = await _open(port)
        assert await _closed_within(silent_r, 3)
        silent_w.close()
        # A kept-alive connection serves requests, then is closed after idle_timeout.
        r, w = await _open(port)
        for _ in range(2):
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")).split(b":")[1])
            await r.readexactly(length)
            await asyncio.sleep(0.7)  # longer than head_timeout, shorter than idle_timeout: still open
        started = time.monotonic()
        assert await _closed_within(r, 3)
        assert 0.2 < time.monotonic() - started < 2.5
        w.close()
        assert guard.closed == {"head": 1, "idle": 1}


async def test_per_client_and_global_connection_caps(tmp_path: Path) -> None:
    async with guarded(_cfg(tmp_path, max_per_client=3, max_connections=5)) as (port, guard):
        held = [await _open(port, "127.0.0.1") for _ in range(3)]
        await asyncio.sleep(0.1)
        status, _, body = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1")
        assert status == 429 and json.loads(body)["error"] == "too_many_connections"
        # Another client address is still served, over a connection that counts too.
        status, _, _ = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.2")
        assert status == 200
        held += [await _open(port, "127.0.0.3") for _ in range(2)]
        await asyncio.sleep(0.1)
        status, _, body = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.4")
        assert status == 503 and json.loads(body)["error"] == "unavailable"
        # The connections already held are still served.
        r, w = held[0]
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        assert guard.refused == {"client": 1, "global": 1}
        r, w = held[1]
        w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")).split(b":")[1])
        text = (await r.readexactly(length)).decode()
        assert 'parallax_connection_events{event="refused_client"} 1.0' in text
        assert 'parallax_connection_events{event="refused_global"} 1.0' in text
        for _, w in held:
            w.close()


async def _slow(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await _open(port, source)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a partial head, never completed
    await w.drain()
    return r, w


async def test_slow_connections_from_many_addresses_do_not_lock_out_a_good_client(tmp_path: Path) -> None:
    """Review 2, finding 1: max_per_client slow connections from each of many addresses fill the cap."""
    cfg = _cfg(tmp_path, max_per_client=2, max_connections=8, max_pending_per_net=100, evict_after=0.5)
    async with guarded(cfg) as (port, guard):
        held = [await _slow(port, f"127.1.{i}.1") for i in range(4) for _ in range(2)]  # 4 networks x 2 = the cap
        await asyncio.sleep(0.1)
        status, _, body = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1")
        assert status == 503  # every stalled connection is younger than evict_after: nothing to evict
        await asyncio.sleep(0.6)
        # A newcomer from one of those networks may not displace a connection of another: churning
        # each other young would keep everyone else out.
        status, _, body = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.1.3.9")
        assert status == 503
        good = []
        for source in ("127.0.0.1", "127.0.5.1"):  # good clients are served (keeping their connections),
            r, w = await _open(port, source)  # each evicting a stalled connection
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
            good.append(w)
        assert guard.evicted == 2
        # The longest-stalled one went first, then the longest-stalled of a network still holding two.
        assert await _closed_within(held[0][0], 3)
        assert await _closed_within(held[2][0], 3)
        assert guard.open == 8
        for w in good:
            w.close()
        for _, w in held:
            w.close()


async def test_pending_connections_are_capped_per_network(tmp_path: Path) -> None:
    """Slow connections from many addresses of one /24 stop at max_pending_per_net; other networks are served."""
    async with guarded(_cfg(tmp_path, max_per_client=2, max_pending_per_net=5)) as (port, guard):
        held = [await _slow(port, f"127.1.0.{i // 2 + 1}") for i in range(5)]
        await asyncio.sleep(0.1)
        status, _, body = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.1.0.9")
        assert status == 429 and json.loads(body) == {
            "error": "too_many_connections", "reason": "this client network holds too many connections awaiting a request"}
        status, _, _ = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.1.1.9")
        assert status == 200
        # A connection that delivered its head no longer counts as pending: the network gets a slot back.
        r, w = held[0]
        w.write(b"\r\n")
        assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        status, _, _ = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.1.0.9")
        assert status == 200
        assert guard.refused["client"] == 1
        for _, w in held:
            w.close()


async def test_connection_events_log_no_client_address(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Review 2, finding 4: no client address in the log unless the operator opts in (--access-log)."""
    caplog.set_level(logging.DEBUG, logger="parallax")
    cfg = _cfg(tmp_path, head_timeout=0.3, max_per_client=1, max_pending_per_net=2, max_connections=2, evict_after=0.2)
    async with guarded(cfg) as (port, guard):
        r1, w1 = await _slow(port, "127.1.2.3")
        status, _, _ = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.1.2.3")
        assert status == 429  # per-client refusal
        r2, w2 = await _slow(port, "127.1.2.4")
        status, _, _ = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.1.2.5")
        assert status == 429  # per-network refusal
        assert await _closed_within(r1, 3) and await _closed_within(r2, 3)  # head deadline closes
        assert guard.open == 0
        held = [await _slow(port, f"127.1.3.{7 + i}") for i in range(2)]
        await asyncio.sleep(0.25)
        status, _, _ = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "127.1.9.8")
        assert status == 200  # evicted one of the stalled ones
        assert guard.refused["client"] == 2 and guard.closed["head"] >= 2 and guard.evicted == 1
        for w in (w1, w2, *(w for _, w in held)):
            w.close()
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "closed a connection" in text and "refusing connections" in text and "evicted" in text
    assert "127.1." not in text


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


async def test_out_of_descriptors_pauses_accepting_then_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    """accept() failing with EMFILE leaves the socket readable: the acceptor must pause, not spin."""
    import resource

    from notary import connguard

    monkeypatch.setattr(connguard, "ACCEPT_RETRY_DELAY", 0.3)
    guard = ConnectionGuard(ConnLimits())
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    acceptor = connguard.Acceptor(guard, asyncio.Protocol, listener)
    calls = 0
    original = acceptor._on_readable

    def counting() -> None:
        nonlocal calls
        calls += 1
        original()
    acceptor._on_readable = counting  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    loop.remove_reader(listener.fileno())
    loop.add_reader(listener.fileno(), acceptor._on_readable)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    try:
        highest = max(fd for fd in map(int, os.listdir("/proc/self/fd")) if _is_open(fd))  # not listdir's own
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        fillers: list[int] = []
        try:
            while True:  # fill the holes below the limit: no descriptor is left for accept()
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    break
            await asyncio.sleep(0.2)
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert guard.open == 0
        assert calls <= 2  # paused after the failure, not called again on every loop turn
        for _ in range(50):  # resumed after ACCEPT_RETRY_DELAY: the waiting connection is admitted
            if guard.open == 1:
                break
            await asyncio.sleep(0.05)
        assert guard.open == 1
    finally:
        client.close()
        acceptor.close()
        await asyncio.sleep(0.05)


def test_throttled_log_folds_repeats() -> None:
    now = [0.0]
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("parallax.test.throttled")
    logger.addHandler(Capture())
    t = Throttled(logger, 10.0, clock=lambda: now[0])
    for i in range(1000):
        now[0] = i * 0.01
        t.warning("k", "event")
    now[0] = 10.5
    t.warning("k", "event")
    assert records == ["event", "event (999 more like it in the last 10s)"]


_SUBPROCESS_NOTARY = r"""
import resource, sys, json
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[2])))
from notary.config import NotaryConfig
from notary.core import SigningKey
from notary.server import run
import logging
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
cfg = NotaryConfig(data_dir=Path(sys.argv[1]))
run(cfg, SigningKey.generate(), "127.0.0.1", 0, on_bound=lambda b: print(json.dumps(b), flush=True))
"""


def test_at_the_fd_limit_new_connections_are_refused_and_old_ones_served(tmp_path: Path) -> None:
    """A notary with only 256 descriptors faces 300 slow connections from 30 addresses."""
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", _SUBPROCESS_NOTARY, str(tmp_path), "256"],
                                stdout=subprocess.PIPE, stderr=log_file, cwd=Path(__file__).parent.parent)
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())[1]
        keeper = socket.create_connection(("127.0.0.1", port), timeout=5)

        def healthz(sock: socket.socket) -> bytes:
            """One whole response (head, then Content-Length bytes): aiohttp may send head and body
            in separate segments, so a single recv can return the head alone."""
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data and (chunk := sock.recv(4096)):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            while length and len(body) < int(length.group(1)) and (chunk := sock.recv(4096)):
                body += chunk
            return head + b"\r\n\r\n" + body

        assert healthz(keeper).startswith(b"HTTP/1.1 200")
        slow = []
        for i in range(300):
            s = socket.socket()
            s.bind((f"127.0.{i // 10 + 10}.1", 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(b"GET /healthz HTTP/1.1\r\n")
            except OSError:
                pass
            slow.append(s)
        time.sleep(0.5)
        # The connection held from before keeps being served, every time.
        answers = [healthz(keeper) for _ in range(16)]
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [a[:30] for a in answers]
        # A new connection is refused at once with a JSON 503, not left hanging.
        fresh = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert healthz(fresh).startswith(b"HTTP/1.1 503")
        fresh.close()
        for s in slow:
            s.close()
        keeper.close()
    finally:
        stop(proc)
    text = log_path.read_text()
    assert "Traceback" not in text
    assert "Too many open files" not in text  # refused before the descriptors ran out
    assert text.count("refusing connections") <= 2  # once per interval, not per refused connection


# -- 5 and 6. malformed requests ------------------------------------------------------------

BODY = json.dumps({"targets": [{"host": "example.com"}], "nonce": NONCE}).encode()


def _post(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST /v1/observe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
async def test_a_body_that_is_not_what_its_content_encoding_says_is_a_json_400(
        tmp_path: Path, encoding: bytes, caplog: pytest.LogCaptureFixture) -> None:
    async with guarded(_cfg(tmp_path)) as (port, _):
        status, headers, body = await _request(port, _post(BODY, b"Content-Encoding: " + encoding + b"\r\n"))
    assert status == 400, body
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == "bad_encoding"
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_really_compressed_body_is_still_accepted(tmp_path: Path) -> None:
    cfg = replace(_cfg(tmp_path), policy=NotaryConfig(data_dir=tmp_path).policy)
    async with guarded(cfg) as (port, _):
        bad = json.dumps({"targets": [{"host": "example.com", "port": 1}], "nonce": NONCE}).encode()
        status, _, body = await _request(port, _post(zlib.compress(bad), b"Content-Encoding: deflate\r\n"))
    assert status == 200, body  # port 1 is refused by policy: a signed observation, no network


@pytest.mark.parametrize("raw", [
    _post(BODY).replace(b"Content-Length: ", b"Content-Length: -"),
    _post(BODY, b"Content-Length: 5\r\n"),
    _post(BODY, b"Transfer-Encoding: chunked\r\n"),
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"FROBNICATE /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"FRO<script>BNICATE /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    _post(BODY, b"Content-Encoding: br\r\n"),
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header<script>: y\r\n\r\n",
], ids=["negative-length", "duplicate-length", "te-and-cl", "long-line", "unknown-method",
        "method-with-markup", "brotli", "bad-header-name"])
async def test_parser_errors_answer_json_echo_nothing_and_log_no_traceback(
        tmp_path: Path, raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with guarded(_cfg(tmp_path)) as (port, _):
        status, headers, body = await _request(port, raw)
    assert 400 <= status < 500, body
    assert headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert set(doc) == {"error", "reason"} and doc["error"] in ("bad_http", "bad_encoding", "method_not_allowed")
    for echoed in (b"script", b"aaaa", b"FROBNICATE", b"Bad Header", b"-"):
        if echoed in raw and echoed != b"-":
            assert echoed.lower() not in body.lower()
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


if os.environ.get("PARALLAX_GUARD_DEBUG"):  # pragma: no cover
    logging.basicConfig(level=logging.DEBUG)


# -- lazy deadline timers (issue 11): one pending timer per connection, moved without churn ----------

async def _serve_one(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")).split(b":")[1])
    await r.readexactly(length)


async def test_a_kept_alive_connection_trickling_its_next_head_is_closed_at_the_head_deadline(tmp_path: Path) -> None:
    """The idle deadline (long) is pending when the next request's first byte arrives; the head
    deadline (short) it then starts must still be met, though no timer is re-created per request."""
    async with guarded(_cfg(tmp_path, head_timeout=0.6, idle_timeout=5.0)) as (port, guard):
        r, w = await _open(port)
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # many requests over longer than head_timeout: the
            await _serve_one(r, w)                # connection's first timer is long gone
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        started = time.monotonic()
        assert await _closed_within(r, 4)
        elapsed = time.monotonic() - started
        w.close()
        assert 0.4 < elapsed < 2.0, elapsed  # the head deadline (0.6 s), not the idle one (5 s)
        assert guard.closed == {"head": 1, "idle": 0}
        assert guard.open == 0


async def test_a_busy_connection_is_never_closed_and_its_idle_deadline_starts_after_the_answer(tmp_path: Path) -> None:
    """Requests keep a connection busy past both deadlines' lengths in total; it is closed only
    after ``idle_timeout`` of silence following its last answer."""
    async with guarded(_cfg(tmp_path, head_timeout=0.3, idle_timeout=0.8)) as (port, guard):
        r, w = await _open(port)
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # longer than both deadlines, never idle for long
            await _serve_one(r, w)
            await asyncio.sleep(0.1)
        last = time.monotonic()
        assert await _closed_within(r, 4)
        idle = time.monotonic() - last
        w.close()
        assert 0.6 < idle < 2.0, idle
        assert guard.closed == {"head": 0, "idle": 1}


@contextlib.contextmanager
def _counting_expirations() -> Iterator[list[int]]:
    """Counts ``_Guarded._expired`` calls (the guard's deadline timer firing) while active."""
    calls = [0]
    original = _Guarded._expired

    def counting(self: _Guarded) -> None:
        calls[0] += 1
        original(self)

    _Guarded._expired = counting  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        _Guarded._expired = original  # type: ignore[method-assign]


async def _all_closed_for_the_head_deadline(cfg: NotaryConfig, n: int) -> float:
    """``n`` silent connections from distinct addresses; each closed for its head deadline.  Seconds taken."""
    async with guarded(cfg) as (port, guard):
        conns = [await _open(port, f"127.0.3.{i + 1}") for i in range(n)]
        started = time.monotonic()
        closed = await asyncio.gather(*(_closed_within(r, 4) for r, _ in conns))
        elapsed = time.monotonic() - started
        for _, w in conns:
            w.close()
        assert all(closed)
        assert guard.closed["head"] == n
    return elapsed


async def test_a_zero_idle_timeout_does_not_make_waiting_timers_spin(tmp_path: Path) -> None:
    """Review of the speed pass: the timer step was min(head_timeout, idle_timeout), so
    ``idle_timeout=0`` re-armed every waiting connection's timer on every loop pass (868,900
    callbacks and 2 CPU seconds for 20 connections over 2 s).  The head deadline still holds."""
    with _counting_expirations() as calls:
        elapsed = await _all_closed_for_the_head_deadline(_cfg(tmp_path, head_timeout=1.0, idle_timeout=0.0), 10)
    assert 0.8 < elapsed < 2.5, elapsed
    assert calls[0] < 100, calls  # about one per connection


async def test_a_head_deadline_off_the_millisecond_grid_does_not_make_its_timer_spin(tmp_path: Path) -> None:
    """Review of uvloop: its clock and its timers move in whole milliseconds, so a timer could run a
    fraction of a millisecond before a deadline like now + 0.3 s; re-armed for that fraction, it ran
    on every loop pass until the clock ticked (4,357 calls for 50 connections; asyncio's loop: 50).
    Run on uvloop by CI's uvloop tier (PARALLAX_LOOP=uvloop); on asyncio's loop it holds as well."""
    with _counting_expirations() as calls:
        await _all_closed_for_the_head_deadline(_cfg(tmp_path, head_timeout=0.3), 40)
    assert calls[0] < 3 * 40, calls  # about one per connection
