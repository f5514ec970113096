"""A minimal WebDriver BiDi client and a headless Firefox launcher (no geckodriver, no download).

Firefox is started with ``--remote-debugging-port=0``; the WebSocket address is read
from its log line ``WebDriver BiDi listening on ws://...``.  :meth:`BiDi.send` sends a
command and returns its result; events are collected in :attr:`BiDi.events`.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Sequence

from tests.browser.common import JsonRpcSocket, ProtocolError, connected, launch, wait_ready

FIREFOX = "/usr/bin/firefox-esr"

# Quiet, offline-friendly defaults: no first run, telemetry, updates or background network.
QUIET_PREFS: dict[str, Any] = {
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.newtabpage.activity-stream.feeds.topsites": False,
    "browser.newtabpage.activity-stream.feeds.system.topstories": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.provider.google.updateURL": "",
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.search.update": False,
    "browser.ping-centre.telemetry": False,
    "browser.urlbar.suggest.searches": False,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.contentblocking.report.lockwise.enabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.usage.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.archive.enabled": False,
    "toolkit.telemetry.server": "",
    "extensions.update.enabled": False,
    "extensions.update.autoUpdateDefault": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.blocklist.enabled": False,
    "services.settings.server": "",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "network.trr.mode": 5,  # no DNS over HTTPS
    "security.OCSP.enabled": 0,
    "security.remote_settings.crlite_filters.enabled": False,
    "security.remote_settings.intermediates.enabled": False,
    "geo.provider.network.url": "",
    "media.gmp-manager.url": "",
    "media.gmp-gmpopenh264.enabled": False,
    "identity.fxaccounts.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "dom.push.connection.enabled": False,
    "browser.tabs.warnOnClose": False,
    "xpinstall.signatures.required": False,
}


def user_js(prefs: Mapping[str, Any]) -> str:
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


class BiDiError(ProtocolError):
    pass


class BiDi(JsonRpcSocket):
    error = BiDiError

    def _is_event(self, data: dict[str, Any]) -> bool:
        return data.get("type") == "event"

    async def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 15.0) -> dict[str, Any]:
        data = await self._call(method, params, timeout)
        if data.get("type") == "error":
            raise BiDiError(f"{method}: {data.get('error')}: {data.get('message')}")
        return data.get("result", {})

    async def new_tab(self, url: str | None = None) -> str:
        ctx = (await self.send("browsingContext.create", {"type": "tab"}))["context"]
        if url:
            await self.navigate(ctx, url)
        return ctx

    async def navigate(self, context: str, url: str, wait: str = "complete") -> dict[str, Any]:
        return await self.send("browsingContext.navigate", {"context": context, "url": url, "wait": wait}, timeout=30)

    async def url_of(self, context: str) -> str:
        """The URL the top-level browsing context ``context`` shows now."""
        tree = await self.send("browsingContext.getTree", {"root": context, "maxDepth": 0})
        return tree["contexts"][0]["url"]

    async def click(self, context: str, css: str) -> None:
        """A real mouse click (input.performActions) in the middle of the first element matching ``css``."""
        nodes = (await self.send("browsingContext.locateNodes",
                                 {"context": context, "locator": {"type": "css", "value": css}}))["nodes"]
        if not nodes:
            raise BiDiError(f"no element matches {css!r}")
        element = {"sharedId": nodes[0]["sharedId"]}
        await self.send("input.performActions", {"context": context, "actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "x": 0, "y": 0, "origin": {"type": "element", "element": element}},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0},
            ],
        }]})
        await self.send("input.releaseActions", {"context": context})

    async def evaluate(self, context: str, expression: str, timeout: float = 15.0) -> Any:
        """Evaluate ``expression`` in ``context`` (awaiting a promise) and return it as plain JSON."""
        r = await self.send("script.evaluate", {
            "expression": f"(async () => JSON.stringify(await ({expression})))()",
            "target": {"context": context}, "awaitPromise": True,
        }, timeout=timeout)
        if r.get("type") == "exception":
            raise BiDiError(f"evaluate failed: {json.dumps(r.get('exceptionDetails'))[:800]}")
        value = r.get("result", {})
        if value.get("type") != "string":
            return None
        return json.loads(value["value"])


_LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")


@contextlib.asynccontextmanager
async def firefox(profile: Path, *, prefs: Mapping[str, Any] = {}, extra: Sequence[str] = (),
                  env: dict[str, str] | None = None, log_path: Path, accept_insecure_certs: bool = False,
                  start_timeout: float = 30.0) -> AsyncIterator[BiDi]:
    """Start headless Firefox with a fresh ``profile`` and yield a BiDi connection with a session open."""
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "user.js").write_text(user_js({**QUIET_PREFS, **prefs}))
    argv = [FIREFOX, "--headless", "--no-remote", "--remote-debugging-port=0", "--profile", str(profile), *extra]

    def listening() -> str | None:
        m = _LISTENING.search(log_path.read_text(errors="replace"))
        return m.group(1) if m else None

    async with launch(argv, env=env, log_path=log_path) as proc:
        url = await wait_ready(proc, "firefox", listening, error=BiDiError, timeout=start_timeout,
                               late=f"firefox did not open its WebDriver BiDi port in time (log: {log_path})",
                               log_path=log_path)
        async with connected(BiDi, url.rstrip("/") + "/session", "browser.close") as bidi:
            await bidi.send("session.new",
                            {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": accept_insecure_certs}}})
            yield bidi
