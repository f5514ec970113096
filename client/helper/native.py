"""The native messaging host: ``python -m client.helper.native`` (what the installed launcher runs).

The browser starts this process and speaks :mod:`client.helper.framing` on its
stdin/stdout.  stdout is reserved for frames: at start the real stdout is
moved to a private descriptor and fd 1 is pointed at stderr, so a stray
``print`` can never corrupt the stream.  Logs go to stderr (the browser's own
log) and, if ``$PARALLAX_HELPER_LOG`` names a file, to that file too.

Requests are handled concurrently (each in its own task; answers carry the
request's ``id``).  A malformed or oversized frame gets an error frame and the
host keeps going; a response above the 1 MiB browser limit is shortened (the
per-notary details dropped) or replaced by an error frame.  At end of input the
host finishes the requests in flight (bounded), then exits 0.

Extra command-line arguments (Chromium passes the caller's origin, Firefox the
manifest path and extension id) are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from typing import Any, Awaitable, Callable

from notary import eventloop
from client.helper.framing import (
    MAX_IN, MAX_OUT, BadMessage, FrameError, FrameTooLarge, TruncatedFrame, decode_message, encode_frame, read_frame,
)
from client.helper.service import HelperConfig, HelperService, error

__all__ = ["NativeHost", "frame_response", "main"]

log = logging.getLogger("parallax.helper")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Writer = Callable[[bytes], Awaitable[None]]


def frame_response(resp: dict[str, Any], max_size: int = MAX_OUT) -> bytes:
    """Encode a response, shortening a too-large verdict; an error frame if it still does not fit."""
    try:
        return encode_frame(resp, max_size)
    except FrameTooLarge as exc:
        first = exc
    except (TypeError, ValueError) as exc:  # not JSON-serialisable: a bug in a handler
        log.error("unserialisable response: %s", exc)
        return encode_frame(error(resp.get("id"), "internal", "response is not JSON-serialisable"), max_size)
    v = resp.get("verdict")
    if isinstance(v, dict):
        short = dict(v)
        short["results"] = [{k: r.get(k) for k in ("name", "region", "result", "counted")} for r in v.get("results", [])
                            if isinstance(r, dict)]
        short["truncated"] = True
        with contextlib.suppress(FrameTooLarge):
            return encode_frame({**resp, "verdict": short}, max_size)
        short["results"] = []
        short["quorum_pins"] = short.get("quorum_pins", [])[:8]
        short["summary"] = str(short.get("summary", ""))[:2000]
        with contextlib.suppress(FrameTooLarge):
            return encode_frame({**resp, "verdict": short}, max_size)
    log.warning("response of %d bytes dropped (limit %d)", first.size, max_size)
    return encode_frame(error(resp.get("id"), "response_too_large", str(first)), max_size)


class NativeHost:
    """Reads frames, dispatches each to ``handler`` in its own task, writes the answers."""

    def __init__(
        self,
        handler: Handler,
        write: Writer,
        *,
        max_in: int = MAX_IN,
        max_out: int = MAX_OUT,
        max_pending: int = 64,
        drain_timeout: float = 30.0,
    ) -> None:
        self.handler = handler
        self._write = write
        self.max_in = max_in
        self.max_out = max_out
        self.max_pending = max_pending
        self.drain_timeout = drain_timeout
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, resp: dict[str, Any]) -> None:
        frame = frame_response(resp, self.max_out)
        async with self._lock:  # frames never interleave
            await self._write(frame)

    async def _serve_one(self, msg: dict[str, Any]) -> None:
        try:
            resp = await self.handler(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the handler should not raise; never let it kill the host
            log.exception("handler failed")
            resp = error(msg.get("id") if isinstance(msg.get("id"), (str, int)) else None, "internal", f"{type(exc).__name__}")
        try:
            await self.send(resp)
        except OSError as exc:
            log.warning("cannot write a response: %s", exc)

    async def run(self, reader: asyncio.StreamReader) -> int:
        """Serve until end of input.  Returns 0 (clean end) or 1 (the stream ended inside a frame)."""
        code = 0
        try:
            while True:
                try:
                    payload = await read_frame(reader, self.max_in)
                except FrameTooLarge as exc:
                    log.warning("%s", exc)
                    await self.send(error(None, exc.code, str(exc)))
                    continue
                except TruncatedFrame as exc:
                    log.warning("input ended inside a frame: %s", exc)
                    code = 1
                    break
                if payload is None:
                    break
                try:
                    msg = decode_message(payload)
                except BadMessage as exc:
                    await self.send(error(None, exc.code, str(exc)))
                    continue
                if len(self._tasks) >= self.max_pending:
                    rid = msg.get("id") if isinstance(msg.get("id"), (str, int)) else None
                    await self.send(error(rid, "busy", f"{self.max_pending} requests already in flight"))
                    continue
                t = asyncio.create_task(self._serve_one(msg))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        except FrameError as exc:  # pragma: no cover - every FrameError is handled above
            log.error("framing error: %s", exc)
            code = 1
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout)
            for t in late:
                t.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        return code


def _stdin_reader(fd: int, loop: asyncio.AbstractEventLoop) -> asyncio.StreamReader:
    """A StreamReader fed from ``fd`` by a daemon thread (works for pipes, files and terminals)."""
    reader = asyncio.StreamReader(limit=MAX_IN + 16, loop=loop)

    def pump() -> None:
        try:
            while True:
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                loop.call_soon_threadsafe(reader.feed_data, data)
        except OSError as exc:
            log.warning("stdin: %s", exc)
        except RuntimeError:  # the loop closed under us: the host is exiting
            return
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(reader.feed_eof)

    threading.Thread(target=pump, name="parallax-helper-stdin", daemon=True).start()
    return reader


def _fd_writer(fd: int) -> Writer:
    def write_all(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    async def write(data: bytes) -> None:
        await asyncio.to_thread(write_all, data)

    return write


def _setup_logging() -> None:
    level = getattr(logging, os.environ.get("PARALLAX_LOG", "WARNING").upper(), logging.WARNING)
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not root.handlers:  # ``parallax helper native`` has set up stderr logging already
        h: logging.Handler = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        root.addHandler(h)
    path = os.environ.get("PARALLAX_HELPER_LOG")
    if path:
        with contextlib.suppress(OSError):
            fh = logging.FileHandler(path)
            fh.setFormatter(fmt)
            root.addHandler(fh)


async def serve_stdio(config: HelperConfig | Exception, in_fd: int, out_fd: int) -> int:
    """Serve frames on ``in_fd``/``out_fd``.  A broken configuration answers every request with ``bad_config``."""
    if isinstance(config, Exception):
        problem = str(config)

        async def broken(msg: dict[str, Any]) -> dict[str, Any]:
            rid = msg.get("id") if isinstance(msg.get("id"), (str, int)) else None
            return error(rid, "bad_config", problem)

        return await NativeHost(broken, _fd_writer(out_fd)).run(_stdin_reader(in_fd, asyncio.get_running_loop()))
    service = HelperService(config)
    host = NativeHost(service.handle, _fd_writer(out_fd), drain_timeout=config.timeout + 5)
    try:
        return await host.run(_stdin_reader(in_fd, asyncio.get_running_loop()))
    finally:
        await service.close()


def main(argv: list[str] | None = None, *, config: HelperConfig | None = None) -> int:
    """Run the host on this process's stdin/stdout.  ``argv`` (browser-supplied) is ignored."""
    # Reserve stdout for frames: keep a private copy, point fd 1 (and sys.stdout) at stderr.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _setup_logging()
    cfg: HelperConfig | Exception
    try:
        cfg = config or HelperConfig.load()
    except Exception as exc:  # keep running: every request is told what is wrong
        log.error("bad helper configuration: %s", exc)
        cfg = exc
    try:
        return eventloop.run(serve_stdio(cfg, 0, out_fd))
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(OSError):
            os.close(out_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
