"""End to end in real headless Chromium: the unpacked extension, the native host, a local notary cluster.

* a TLS site on 127.0.0.1:P serves ``clean.test`` and ``mitm.test`` (one trustme certificate);
* an intercepting proxy on 127.0.0.2:P (same port, forged certificate from its own CA) relays to it;
* Chromium maps ``clean.test`` to 127.0.0.1 and ``mitm.test`` to 127.0.0.2 (``--host-resolver-rules``);
  the three notaries resolve both names to the real site (``StaticResolver``);
* the native host manifest is installed by ``client.helper.install`` into the test's own
  ``<user-data-dir>/NativeMessagingHosts``; Chromium launches the host itself.

The extension sends the address Chromium connected to, so the helper probes the same
path the browser used: the real site for ``clean.test`` (consistent) and the interceptor
for ``mitm.test`` (mitm_suspected).  No test seam is needed in the helper.  The verdicts
are read back the way a user sees them: the toolbar badge (``chrome.action.getBadgeText``
evaluated in one of the extension's own pages, which has the same APIs as its service
worker) and the popup page (its DOM; screenshots go to ``test-artifacts/``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from client.cluster import local_cluster
from client.devtools import StaticResolver, interceptor, tls_site
from client.helper.install import EXTENSION_DIR, HOST_NAME, extension_id, install
from tests.browser.cdp import CDP, CHROMIUM, CDPError, chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (CI installs Debian's chromium)"),
]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NAMES = ("clean.test", "mitm.test")


def _context_and_pin(ca: trustme.CA) -> tuple[ssl.SSLContext, str]:
    leaf = ca.issue_cert(*NAMES)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return ctx, base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def _wait(what: str, probe: Any, timeout: float = 30.0, interval: float = 0.25) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while loop.time() < deadline:
        try:
            last = await probe()
        except CDPError as exc:  # e.g. the page is still loading: its context is not there yet
            last = exc
        if last and not isinstance(last, CDPError):
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


BADGE_JS = """(async () => {
  const tabs = (await chrome.tabs.query({})).filter(t => (t.url || t.pendingUrl || "").startsWith(%s));
  if (!tabs.length) return null;
  const tabId = tabs[0].id;
  const text = await chrome.action.getBadgeText({tabId});
  const color = await chrome.action.getBadgeBackgroundColor({tabId});
  const state = (await chrome.storage.session.get("tab:" + tabId))["tab:" + tabId] || null;
  return {tabId, text, color, url: tabs[0].url, status: state && state.status, verdict: state && state.verdict,
          error: state && state.error};
})()"""

POPUP_JS = """(() => {
  if (!document.body || document.body.dataset.ready !== "1") return null;
  const box = document.getElementById("status");
  return {status: box.dataset.status, label: document.getElementById("status-text").textContent,
          color: box.className, summary: document.getElementById("summary").textContent,
          rows: [...document.querySelectorAll("#notaries tbody tr")].map(tr => tr.dataset.result),
          height: document.documentElement.scrollHeight};
})()"""


class Browser:
    def __init__(self, cdp: CDP, ext_id: str) -> None:
        self.cdp = cdp
        self.ext_id = ext_id
        self.page = ""

    async def attach_extension_page(self) -> None:
        """Evaluate extension APIs (tabs, action, storage) in one of the extension's own pages.

        The page has the same ``chrome.*`` APIs as the service worker, and unlike the worker it
        is not stopped or restarted by Chromium while the test holds it.
        """
        target = await self.open(f"chrome-extension://{self.ext_id}/popup.html?tab=0")
        self.page = await self.cdp.attach(target)
        await _wait("the extension page", lambda: self.cdp.evaluate(self.page, "typeof chrome.action === 'object' && document.readyState === 'complete'"), 10)

    async def in_extension(self, js: str) -> Any:
        return await self.cdp.evaluate(self.page, js)

    async def open(self, url: str) -> str:
        return (await self.cdp.send("Target.createTarget", {"url": url}))["targetId"]

    async def badge(self, url_prefix: str) -> dict[str, Any]:
        """The badge and state of the tab at ``url_prefix`` once its check has finished."""
        async def final() -> dict[str, Any] | None:
            b = await self.in_extension(BADGE_JS % json.dumps(url_prefix))
            return b if b and b["status"] not in (None, "checking") else None

        return await _wait(f"a verdict for {url_prefix}", final)

    async def popup(self, tab_id: int, shot: Path) -> dict[str, Any]:
        target = await self.open(f"chrome-extension://{self.ext_id}/popup.html?tab={tab_id}")
        s = await self.cdp.attach(target)
        try:
            await self.cdp.send("Emulation.setDeviceMetricsOverride",
                                {"width": 490, "height": 420, "deviceScaleFactor": 1, "mobile": False}, session=s)
            dom = await _wait("the popup to render", lambda: self.cdp.evaluate(s, POPUP_JS), 10)
            await self.cdp.send("Emulation.setDeviceMetricsOverride",
                                {"width": 490, "height": int(dom["height"]), "deviceScaleFactor": 1, "mobile": False}, session=s)
            png = await self.cdp.send("Page.captureScreenshot", {"format": "png"}, session=s)
            shot.parent.mkdir(parents=True, exist_ok=True)
            shot.write_bytes(base64.b64decode(png["data"]))
            return dom
        finally:
            await self.cdp.send("Target.closeTarget", {"targetId": target})


async def test_extension_shows_verdicts_in_chromium(tmp_path: Path) -> None:
    site_ctx, site_pin = _context_and_pin(trustme.CA(organization_name="Parallax test site CA"))
    forged_ctx, forged_pin = _context_and_pin(trustme.CA(organization_name="Interceptor CA"))
    resolver = StaticResolver({name: ["127.0.0.1"] for name in NAMES})
    udd = tmp_path / "profile"
    helper_log = tmp_path / "helper.log"
    chromium_log = tmp_path / "chromium.log"
    ext_id = extension_id()

    async with tls_site(site_ctx, host="127.0.0.1") as site, \
            interceptor(forged_ctx, ("127.0.0.1", site.port), sni="mitm.test", host="127.0.0.2", port=site.port) as mitm, \
            local_cluster(3, tmp_path / "cluster", resolver=resolver) as cluster:
        installed = install("chromium", user_data_dir=udd, bundle=cluster.bundle_path, launcher_dir=tmp_path / "host")
        assert installed.manifest == udd / "NativeMessagingHosts" / f"{HOST_NAME}.json"
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(tmp_path / "config"),  # no stray user helper.json / bundle
            "PARALLAX_HELPER_LOG": str(helper_log),
            "PARALLAX_LOG": "DEBUG",
        }
        args = [
            "--host-resolver-rules=MAP clean.test 127.0.0.1, MAP mitm.test 127.0.0.2",
            # The site and the interceptor use throw-away trustme CAs that Chromium does not trust.
            # Accept exactly these two leaf keys (and nothing else), so the pages load and the
            # extension sees a normal HTTPS navigation; the helper does its own probing.
            f"--ignore-certificate-errors-spki-list={site_pin},{forged_pin}",
        ]
        try:
            async with chromium(udd, EXTENSION_DIR, args, env=env, log_path=chromium_log) as cdp:
                b = Browser(cdp, ext_id)
                await b.attach_extension_page()

                # 1. A clean path: consistent, green.
                clean_url = f"https://clean.test:{site.port}/"
                await b.open(clean_url)
                clean = await b.badge(clean_url)
                assert clean["status"] == "consistent", json.dumps(clean)[:3000]
                assert clean["text"] == "OK"
                assert clean["color"][:3] == [0x1A, 0x7F, 0x37]
                assert clean["verdict"]["client"]["ip"] == "127.0.0.1"
                assert clean["verdict"]["client"]["pin"] == f"sha256/{site_pin}"
                dom = await b.popup(clean["tabId"], ARTIFACTS / "helper-popup-consistent.png")
                assert dom["status"] == "consistent" and "green" in dom["color"]
                # The helper stops once more answers cannot change the outcome: 2 or 3 rows agree.
                assert len(dom["rows"]) == 3 and dom["rows"].count("agrees") >= 2 and "disagrees" not in dom["rows"]
                assert dom["summary"].startswith("consistent: ")

                # 2. An intercepted path: mitm_suspected, red.
                assert mitm.connections == 0
                mitm_url = f"https://mitm.test:{site.port}/"
                await b.open(mitm_url)
                bad = await b.badge(mitm_url)
                assert bad["status"] == "mitm_suspected", json.dumps(bad)[:3000]
                assert bad["text"] == "!"
                assert bad["color"][:3] == [0xCF, 0x22, 0x2E]
                assert bad["verdict"]["client"]["ip"] == "127.0.0.2"
                assert bad["verdict"]["client"]["pin"] == f"sha256/{forged_pin}"
                assert bad["verdict"]["quorum_pins"] == [f"sha256/{site_pin}"]
                assert mitm.connections >= 1  # the browser's page load went through the interceptor
                dom = await b.popup(bad["tabId"], ARTIFACTS / "helper-popup-mitm.png")
                assert dom["status"] == "mitm_suspected" and "red" in dom["color"]
                assert len(dom["rows"]) == 3 and dom["rows"].count("disagrees") >= 2 and "agrees" not in dom["rows"]
                assert dom["summary"].startswith("MITM suspected")
                # Advisory by default: the intercepted page stayed loaded.
                assert bad["url"].startswith(mitm_url)

                # 3. With the block option on, an intercepted navigation ends on the warning page.
                await b.in_extension("chrome.storage.local.set({blockOnMitm: true})")
                await b.open(mitm_url + "again")
                blocked_prefix = f"chrome-extension://{ext_id}/blocked.html"

                async def on_warning_page() -> dict[str, Any] | None:
                    got = await b.in_extension(BADGE_JS % json.dumps(blocked_prefix))
                    return got if got and got["status"] == "mitm_suspected" else None

                warned = await _wait("the warning page", on_warning_page, 20)
                assert warned["text"] == "!"
                # ... and a later visit is redirected by a declarativeNetRequest session rule.
                rules = await b.in_extension("chrome.declarativeNetRequest.getSessionRules()")
                assert [r["condition"]["urlFilter"] for r in rules] == [f"|https://mitm.test:{site.port}/"]
                target = await b.open(mitm_url + "third")

                async def redirected() -> str | None:
                    info = await cdp.send("Target.getTargetInfo", {"targetId": target})
                    return info["targetInfo"]["url"] if info["targetInfo"]["url"].startswith(blocked_prefix) else None

                await _wait("the redirect to the warning page", redirected, 15)
        except BaseException:
            for p in (helper_log, chromium_log):
                if p.exists():
                    print(f"--- {p.name} ---\n{p.read_text(errors='replace')[-6000:]}")
            raise
