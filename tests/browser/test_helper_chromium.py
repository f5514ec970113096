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

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trustme

from client.cluster import local_cluster
from client.devtools import StaticResolver, tls_site
from client.helper.install import EXTENSION_DIR, HOST_NAME, extension_id, install
from tests.browser.cdp import CDP, CHROMIUM, chromium
from tests.browser.common import (ARTIFACTS, NAMES, POPUP_ROWS_JS, ExtensionBrowser, badge_js, context_and_pin,
                                  helper_env, logs_on_failure, notary_world, popup_js, wait, write_helper_config)
from tests.support.dante import free_port, require_dante, running_dante

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and os.environ.get("PARALLAX_REQUIRE_BROWSERS") != "1",
                       reason=f"{CHROMIUM} is not installed (CI installs Debian's chromium)"),
]

BADGE_JS = badge_js("chrome", 't.url || t.pendingUrl || ""')
POPUP_JS = popup_js()


class Browser(ExtensionBrowser):
    NS = "chrome"
    BADGE_JS = BADGE_JS
    POPUP_JS = POPUP_JS

    def __init__(self, cdp: CDP, ext_id: str) -> None:
        super().__init__(f"chrome-extension://{ext_id}/")
        self.cdp = cdp

    async def evaluate(self, page: str, js: str) -> Any:
        return await self.cdp.evaluate(page, js)

    async def open(self, url: str) -> str:
        return (await self.cdp.send("Target.createTarget", {"url": url}))["targetId"]

    async def _open(self, url: str) -> tuple[str, str]:
        target = await self.open(url)
        return target, await self.cdp.attach(target)

    async def _load(self, handle: tuple[str, str], url: str) -> str:
        return handle[1]  # opened at url already

    async def _set_height(self, handle: tuple[str, str], height: int) -> None:
        await self.cdp.send("Emulation.setDeviceMetricsOverride",
                            {"width": 490, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=handle[1])

    async def _screenshot(self, handle: tuple[str, str]) -> str:
        return (await self.cdp.send("Page.captureScreenshot", {"format": "png"}, session=handle[1]))["data"]

    async def _close(self, handle: tuple[str, str]) -> None:
        await self.cdp.send("Target.closeTarget", {"targetId": handle[0]})


async def test_extension_shows_verdicts_in_chromium(tmp_path: Path) -> None:
    resolver = StaticResolver({name: ["127.0.0.1"] for name in NAMES})
    udd = tmp_path / "profile"
    helper_log = tmp_path / "helper.log"
    chromium_log = tmp_path / "chromium.log"
    ext_id = extension_id()

    async with notary_world(tmp_path, site_host="127.0.0.1", mitm_host="127.0.0.2", resolver=resolver) as world:
        site, mitm, cluster = world.site, world.mitm, world.cluster
        site_pin, forged_pin = world.site_pin, world.forged_pin
        installed = install("chromium", user_data_dir=udd, bundle=cluster.bundle_path, launcher_dir=tmp_path / "host")
        assert installed.manifest == udd / "NativeMessagingHosts" / f"{HOST_NAME}.json"
        env = helper_env(tmp_path, helper_log)
        args = [
            "--host-resolver-rules=MAP clean.test 127.0.0.1, MAP mitm.test 127.0.0.2",
            # The site and the interceptor use throw-away trustme CAs that Chromium does not trust.
            # Accept exactly these two leaf keys (and nothing else), so the pages load and the
            # extension sees a normal HTTPS navigation; the helper does its own probing.
            f"--ignore-certificate-errors-spki-list={site_pin},{forged_pin}",
        ]
        with logs_on_failure(helper_log, chromium_log):
            async with chromium(udd, EXTENSION_DIR, args, env=env, log_path=chromium_log) as cdp:
                b = Browser(cdp, ext_id)
                await b.attach_extension_page()

                # 1. A clean path: consistent, green.
                clean_url = f"https://clean.test:{site.port}/"
                await b.open(clean_url)
                clean, _ = await b.expect_consistent(clean_url, pin=site_pin,
                                                     shot=ARTIFACTS / "helper-popup-consistent.png")
                assert clean["verdict"]["client"]["ip"] == "127.0.0.1"

                # 2. An intercepted path: mitm_suspected, red.
                assert mitm.connections == 0
                mitm_url = f"https://mitm.test:{site.port}/"
                await b.open(mitm_url)
                bad, _ = await b.expect_mitm(mitm_url, site_pin=site_pin, forged_pin=forged_pin,
                                             shot=ARTIFACTS / "helper-popup-mitm.png")
                assert bad["verdict"]["client"]["ip"] == "127.0.0.2"
                assert mitm.connections >= 1  # the browser's page load went through the interceptor

                # 3. With the block option on, an intercepted navigation ends on the warning page.
                await b.in_extension("chrome.storage.local.set({blockOnMitm: true})")
                await b.open(mitm_url + "again")
                blocked_prefix = f"chrome-extension://{ext_id}/blocked.html"

                async def on_warning_page() -> dict[str, Any] | None:
                    got = await b.in_extension(BADGE_JS % json.dumps(blocked_prefix))
                    return got if got and got["status"] == "mitm_suspected" else None

                warned = await wait("the warning page", on_warning_page, 20)
                assert warned["text"] == "!"
                # ... and a later visit is redirected by a declarativeNetRequest session rule.
                rules = await b.in_extension("chrome.declarativeNetRequest.getSessionRules()")
                assert [r["condition"]["urlFilter"] for r in rules] == [f"|https://mitm.test:{site.port}/"]
                target = await b.open(mitm_url + "third")

                async def redirected() -> str | None:
                    info = await cdp.send("Target.getTargetInfo", {"targetId": target})
                    return info["targetInfo"]["url"] if info["targetInfo"]["url"].startswith(blocked_prefix) else None

                await wait("the redirect to the warning page", redirected, 15)




async def test_popup_lists_proxy_vantages_in_chromium(tmp_path: Path) -> None:
    """The helper's ``via`` SOCKS proxies (helper.json) show in the popup as unsigned rows after the
    notaries': a real Dante proxy that reached the site and saw its key ("agrees"), and a proxy
    nobody listens on ("proxy_failed").  Needs danted (root) as well as Chromium."""
    require_dante()
    ca = trustme.CA(organization_name="Parallax test site CA")
    site_ctx, site_pin = context_and_pin(ca, ("localhost",))
    resolver = StaticResolver({"localhost": ["127.0.0.1"]})
    udd = tmp_path / "profile"
    helper_log = tmp_path / "helper.log"
    chromium_log = tmp_path / "chromium.log"
    (tmp_path / "dante").mkdir()
    with running_dante(tmp_path / "dante") as dante:
        dead = f"socks5://127.0.0.1:{free_port()}"
        async with tls_site(site_ctx, host="127.0.0.1") as site, \
                local_cluster(3, tmp_path / "cluster", resolver=resolver) as cluster:
            install("chromium", user_data_dir=udd, bundle=cluster.bundle_path, launcher_dir=tmp_path / "host")
            env = helper_env(tmp_path, helper_log)
            write_helper_config(env, {"via": [dante.url, dead]})
            args = ["--host-resolver-rules=MAP localhost 127.0.0.1", f"--ignore-certificate-errors-spki-list={site_pin}"]
            with logs_on_failure(helper_log, chromium_log, dante.log):
                async with chromium(udd, EXTENSION_DIR, args, env=env, log_path=chromium_log) as cdp:
                    b = Browser(cdp, extension_id())
                    b.POPUP_JS = POPUP_ROWS_JS
                    await b.attach_extension_page()
                    url = f"https://localhost:{site.port}/"
                    await b.open(url)
                    got = await b.badge(url)
                    assert got["status"] in ("consistent", "consistent_with_outliers"), json.dumps(got)[:3000]
                    vantages = {v["name"]: v for v in got["verdict"]["vantages"]}
                    assert len(vantages) == 2, vantages
                    dom = await b.popup(got["tabId"], ARTIFACTS / "helper-popup-proxies.png")
    rows = dom["cells"]
    assert [r["kind"] for r in rows] == ["notary"] * 3 + ["proxy"] * 2, rows
    proxies = rows[3:]
    for r in proxies:
        assert r["texts"][1].startswith("proxy (unsigned"), r  # the REGION column says what it is
        assert r["texts"][4] == "-"                            # no signed age
    live, gone = proxies
    assert live["result"] == "agrees" and live["texts"][3] == "agrees", live
    assert live["texts"][2].startswith(f"sha256/{site_pin[:12]}"), live  # the key the proxy saw
    assert gone["result"] == "proxy_failed" and gone["texts"][2] == "-", gone
    assert f"127.0.0.1:{dante.port}" in live["texts"][0] and dead.rsplit("/", 1)[1] in gone["texts"][0], proxies
