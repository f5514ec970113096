"""A minimal Chrome DevTools Protocol client and a headless Chromium launcher (no driver, no download).

Speaks CDP over the browser's WebSocket (``--remote-debugging-port=0``; the port
is read from ``<user-data-dir>/DevToolsActivePort``) in flat session mode:
``attach(target_id)`` returns a session id to pass to :meth:`CDP.send`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import aiohttp

CHROMIUM = "/usr/bin/chromium"


class CDPError(Exception):
    pass


class CDP:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str) -> "CDP":
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(url, max_msg_size=64 << 20, timeout=aiohttp.ClientWSTimeout(ws_close=2))
        return cls(session, ws)

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            fut = self._waiting.pop(data.get("id", -1), None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(data)
            else:
                self.events.append(data)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(CDPError("browser connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
                   timeout: float = 15.0) -> dict[str, Any]:
        i = next(self._ids)
        msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        await self._ws.send_str(json.dumps(msg))
        data = await asyncio.wait_for(fut, timeout)
        if "error" in data:
            raise CDPError(f"{method}: {data['error']}")
        return data.get("result", {})

    async def attach(self, target_id: str) -> str:
        r = await self.send("Target.attachToTarget", {"targetId": target_id, "flatten": True})
        return r["sessionId"]

    async def evaluate(self, session: str, expression: str, timeout: float = 15.0) -> Any:
        r = await self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                            session=session, timeout=timeout)
        if "exceptionDetails" in r:
            raise CDPError(f"evaluate failed: {json.dumps(r['exceptionDetails'])[:800]}")
        return r["result"].get("value")

    async def targets(self) -> list[dict[str, Any]]:
        return (await self.send("Target.getTargets"))["targetInfos"]

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._ws.close()
        await self._session.close()


def chromium_args(user_data_dir: Path, extension: Path, extra: Sequence[str] = ()) -> list[str]:
    return [
        CHROMIUM,
        "--headless=new",  # extensions only run in the new headless mode
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--password-store=basic",
        "--use-mock-keychain",
        # Newer Chromium builds may disable --load-extension by this feature; keep it on for the test.
        "--disable-features=DisableLoadExtensionCommandLineSwitch",
        f"--user-data-dir={user_data_dir}",
        f"--load-extension={extension}",
        f"--disable-extensions-except={extension}",
        "--remote-debugging-port=0",
        "--window-size=1024,768",
        *extra,
        "about:blank",
    ]


@contextlib.asynccontextmanager
async def chromium(user_data_dir: Path, extension: Path, extra: Sequence[str] = (), *,
                   env: dict[str, str] | None = None, log_path: Path | None = None,
                   start_timeout: float = 20.0) -> AsyncIterator[CDP]:
    """Start headless Chromium and yield a CDP connection to it; kill it (its whole group) at the end."""
    user_data_dir.mkdir(parents=True, exist_ok=True)
    active = user_data_dir / "DevToolsActivePort"
    with contextlib.suppress(FileNotFoundError):
        active.unlink()
    log = open(log_path or os.devnull, "wb")
    proc = subprocess.Popen(chromium_args(user_data_dir, extension, extra), stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    cdp: CDP | None = None
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout
        while True:
            if proc.poll() is not None:
                raise CDPError(f"chromium exited with {proc.returncode} (log: {log_path})")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                lines = active.read_text().splitlines()
                if len(lines) >= 2:
                    port, path = int(lines[0]), lines[1]
                    break
            if loop.time() > deadline:
                raise CDPError("chromium did not open its DevTools port in time")
            await asyncio.sleep(0.1)
        cdp = await CDP.connect(f"ws://127.0.0.1:{port}{path}")
        yield cdp
    finally:
        if cdp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(cdp.send("Browser.close"), 3)
            await cdp.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 5)
        log.close()
