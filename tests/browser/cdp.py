"""A minimal Chrome DevTools Protocol client and a headless Chromium launcher (no driver, no download).

Speaks CDP over the browser's WebSocket (``--remote-debugging-port=0``; the port
is read from ``<user-data-dir>/DevToolsActivePort``) in flat session mode:
``attach(target_id)`` returns a session id to pass to :meth:`CDP.send`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from tests.browser.common import JsonRpcSocket, ProtocolError, connected, launch, wait_ready

CHROMIUM = "/usr/bin/chromium"


class CDPError(ProtocolError):
    pass


class CDP(JsonRpcSocket):
    error = CDPError

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
                   timeout: float = 15.0) -> dict[str, Any]:
        data = await self._call(method, params, timeout, **({"sessionId": session} if session else {}))
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

    def devtools_port() -> tuple[int, str] | None:
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            lines = active.read_text().splitlines()
            if len(lines) >= 2:
                return int(lines[0]), lines[1]
        return None

    async with launch(chromium_args(user_data_dir, extension, extra), env=env, log_path=log_path) as proc:
        port, path = await wait_ready(proc, "chromium", devtools_port, error=CDPError, timeout=start_timeout,
                                      late="chromium did not open its DevTools port in time", log_path=log_path)
        async with connected(CDP, f"ws://127.0.0.1:{port}{path}", "Browser.close") as cdp:
            yield cdp
