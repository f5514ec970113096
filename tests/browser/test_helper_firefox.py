"""End to end in real headless Firefox ESR: the extension (temporary add-on), the native host, a local notary cluster.

Firefox's path differs from Chromium's: the extension reads the certificate chain the
browser received (``webRequest.getSecurityInfo``) and sends it to the helper, which
compares that key with what the notaries see (``client.source == "supplied"``).

* the real site (one trustme certificate for ``clean.test`` and ``mitm.test``) listens on
  127.0.0.2:P and 127.0.0.1:Q (same key);
* an intercepting proxy on 127.0.0.1:P (forged certificate from its own CA) relays to 127.0.0.2:P;
* Firefox resolves every name to 127.0.0.1 (pref ``network.dns.forceResolve``), so
  ``https://clean.test:Q/`` reaches the real site and ``https://mitm.test:P/`` the interceptor;
  the three notaries resolve ``clean.test`` to 127.0.0.1 and ``mitm.test`` to 127.0.0.2 (the real
  site both times, ``StaticResolver``);
* the native host manifest is installed by ``client.helper.install`` into the test's own
  ``$HOME/.mozilla/native-messaging-hosts``; Firefox launches the host itself.

After the advisory checks the test turns blocking mode on (``blockOnMitm``, as the options
page does): the intercepted navigation must end on the extension's warning page without the
site's response ever loading, the origin must then be redirected before any connection, and a
real mouse click on "Proceed anyway" must load the site for the session, still flagged.

Both throw-away CAs are trusted in the profile's own NSS database (``certutil``, Debian's
libnss3-tools), as if the user had installed the interceptor's CA: a certificate exception
would load the pages but leave ``getSecurityInfo`` without certificates.  Driven over WebDriver
BiDi (``tests/browser/bidi.py``): ``webExtension.install`` loads the unpacked extension as a
temporary add-on, its moz-extension UUID fixed by the pref ``extensions.webextensions.uuids``;
``--remote-allow-system-access`` lets BiDi open the extension's own pages.  The verdicts are
read back from the badge and storage (evaluated in one of the extension's pages) and the popup
page (its DOM; screenshots go to ``test-artifacts/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import trustme

from client.cluster import local_cluster
from client.devtools import StaticResolver, tls_site
from client.helper.install import EXTENSION_DIR, FIREFOX_EXTENSION_ID, HOST_NAME, install
from tests.browser.bidi import FIREFOX, BiDi, BiDiError, firefox
from tests.browser.common import (
    ARTIFACTS,
    POPUP_ROWS_JS,
    context_and_pin,
    ExtensionBrowser,
    badge_js,
    helper_env,
    logs_on_failure,
    notary_world,
    popup_js,
    save_png,
    wait,
    write_helper_config,
)
from tests.support.dante import free_port, require_dante, running_dante

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.exists(FIREFOX) and os.environ.get("PARALLAX_REQUIRE_BROWSERS") != "1",
                       reason=f"{FIREFOX} is not installed (CI installs Debian's firefox-esr)"),
]

CERTUTIL = "certutil"


def _trust(profile: Path, cas: dict[str, trustme.CA]) -> None:
    """Make the profile's own NSS database trust ``cas`` (for TLS servers only).

    A certificate exception (cert_override.txt, or BiDi's acceptInsecureCerts) would load the
    pages too, but then Firefox builds no chain and ``getSecurityInfo`` returns no certificates:
    the extension's Firefox path needs a normally validated connection.
    """
    if not shutil.which(CERTUTIL):
        pytest.fail(f"{CERTUTIL} is missing: install Debian's libnss3-tools (needed next to firefox-esr)")
    profile.mkdir(parents=True, exist_ok=True)
    db = f"sql:{profile}"
    subprocess.run([CERTUTIL, "-N", "-d", db, "--empty-password"], check=True, capture_output=True)
    for nick, ca in cas.items():
        pem = profile / f"{nick}.pem"
        ca.cert_pem.write_to_path(str(pem))
        subprocess.run([CERTUTIL, "-A", "-d", db, "-n", nick, "-t", "C,,", "-i", str(pem)], check=True, capture_output=True)


WARNING_JS = """(() => {
  const s = document.getElementById("summary"), site = document.getElementById("site");
  if (!s || !s.textContent) return null;
  return {site: site.textContent, summary: s.textContent, body: document.body.textContent};
})()"""


async def _at(bidi: BiDi, tab: str, url: str) -> bool:
    return await bidi.url_of(tab) == url


async def _save(bidi: BiDi, tab: str, shot: Path) -> None:
    save_png(shot, (await bidi.send("browsingContext.captureScreenshot", {"context": tab}))["data"])


BADGE_JS = badge_js("browser", 't.url || ""', ", sent: state && state.extra ? Object.keys(state.extra) : null")
POPUP_JS = popup_js('          saw: document.getElementById("you-saw").textContent,\n')


class Browser(ExtensionBrowser):
    NS = "browser"
    BADGE_JS = BADGE_JS
    POPUP_JS = POPUP_JS

    def __init__(self, bidi: BiDi, ext_uuid: str) -> None:
        super().__init__(f"moz-extension://{ext_uuid}/")
        self.bidi = bidi

    async def evaluate(self, page: str, js: str) -> Any:
        return await self.bidi.evaluate(page, js)

    async def _open(self, url: str) -> str:
        return await self.bidi.new_tab()

    async def _load(self, ctx: str, url: str) -> str:
        await self.bidi.navigate(ctx, url)
        return ctx

    async def _set_height(self, ctx: str, height: int) -> None:
        await self.bidi.send("browsingContext.setViewport", {"context": ctx, "viewport": {"width": 490, "height": height}})

    async def _screenshot(self, ctx: str) -> str:
        return (await self.bidi.send("browsingContext.captureScreenshot", {"context": ctx}))["data"]

    async def _close(self, ctx: str) -> None:
        await self.bidi.send("browsingContext.close", {"context": ctx})


@contextlib.asynccontextmanager
async def firefox_with_extension(tmp_path: Path, bundle: Path, ext_uuid: str, helper_log: Path, firefox_log: Path,
                                 cas: dict[str, trustme.CA], helper_config: dict[str, Any] | None = None,
                                 ) -> AsyncIterator[BiDi]:
    """Firefox ESR with the extension installed (moz-extension UUID ``ext_uuid``), the native host
    manifest under ``tmp_path/home`` (its bundle: ``bundle``; ``helper_config``: its helper.json),
    ``cas`` trusted in the profile and every name resolved to 127.0.0.1; the logs printed on failure."""
    home = tmp_path / "home"
    installed = install("firefox", bundle=bundle, launcher_dir=tmp_path / "host",
                        manifest_directory=home / ".mozilla" / "native-messaging-hosts")
    assert installed.allowed == (FIREFOX_EXTENSION_ID,)
    assert json.loads(installed.manifest.read_text())["allowed_extensions"] == [FIREFOX_EXTENSION_ID]
    assert installed.manifest == home / ".mozilla" / "native-messaging-hosts" / f"{HOST_NAME}.json"
    env = helper_env(tmp_path, helper_log,
                     HOME=str(home),  # Firefox reads $HOME/.mozilla/native-messaging-hosts
                     XDG_CACHE_HOME=str(tmp_path / "cache"),
                     MOZ_CRASHREPORTER_DISABLE="1")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    if helper_config is not None:
        write_helper_config(env, helper_config)
    prefs = {
        "network.dns.forceResolve": "127.0.0.1",  # every name -> loopback; no real DNS
        "devtools.console.stdout.chrome": True,  # the extension's console.warn lands in firefox.log
        "extensions.webextensions.uuids": json.dumps({FIREFOX_EXTENSION_ID: ext_uuid}),
    }
    profile = tmp_path / "profile"
    _trust(profile, cas)
    with logs_on_failure(helper_log, firefox_log):
        # --remote-allow-system-access: BiDi may navigate to the extension's own moz-extension:// pages.
        async with firefox(profile, prefs=prefs, extra=["--remote-allow-system-access"], env=env,
                           log_path=firefox_log) as bidi:
            got = await bidi.send("webExtension.install", {"extensionData": {"type": "path", "path": str(EXTENSION_DIR)}})
            assert got["extension"] == FIREFOX_EXTENSION_ID
            yield bidi


async def test_extension_shows_verdicts_in_firefox(tmp_path: Path) -> None:
    resolver = StaticResolver({"clean.test": ["127.0.0.1"], "mitm.test": ["127.0.0.2"]})
    helper_log = tmp_path / "helper.log"
    firefox_log = tmp_path / "firefox.log"
    ext_uuid = str(uuid.uuid4())

    async with notary_world(tmp_path, site_host="127.0.0.2", mitm_host="127.0.0.1", clean_site_host="127.0.0.1",
                            resolver=resolver) as world:
        site, mitm, clean_site, cluster = world.site, world.mitm, world.clean_site, world.cluster
        site_pin, forged_pin = world.site_pin, world.forged_pin
        async with firefox_with_extension(tmp_path, cluster.bundle_path, ext_uuid, helper_log, firefox_log,
                                          {"parallax-site-ca": world.site_ca, "interceptor-ca": world.forged_ca}) as bidi:
            b = Browser(bidi, ext_uuid)
            await b.attach_extension_page()

            # 1. A clean path: consistent, green; the helper got the browser's chain.
            clean_url = f"https://clean.test:{clean_site.port}/"
            await bidi.new_tab(clean_url)
            clean, dom = await b.expect_consistent(clean_url, pin=site_pin,
                                                   shot=ARTIFACTS / "helper-popup-firefox-consistent.png")
            assert clean["sent"] == ["chain"]
            assert clean["verdict"]["client"]["source"] == "supplied"
            assert "browser's chain" in dom["saw"]

            # 2. An intercepted path: mitm_suspected, red.
            assert mitm.connections == 0
            mitm_url = f"https://mitm.test:{site.port}/"
            await bidi.new_tab(mitm_url)
            bad, _ = await b.expect_mitm(mitm_url, site_pin=site_pin, forged_pin=forged_pin,
                                         shot=ARTIFACTS / "helper-popup-firefox-mitm.png")
            assert bad["sent"] == ["chain"]
            assert bad["verdict"]["client"]["source"] == "supplied"
            assert mitm.connections >= 1  # the browser's page load went through the interceptor

            # 3. Blocking mode, switched on as the options page does: the intercepted response is
            #    held until the verdict, cancelled, and the tab sent to the warning page; the
            #    site's page is never shown.
            assert await b.in_extension("browser.storage.local.set({blockOnMitm: true}).then(() => true)")
            blocked_url = f"{b.base}blocked.html?host=mitm.test&port={site.port}"
            before = mitm.connections
            tab = await bidi.new_tab()
            await bidi.send("session.subscribe", {"events": ["browsingContext.load", "browsingContext.navigationFailed"],
                                                  "contexts": [tab]})
            with contextlib.suppress(BiDiError):  # the navigation itself is cancelled
                await bidi.navigate(tab, mitm_url, wait="none")
            await wait("the warning page", lambda: _at(bidi, tab, blocked_url))
            assert mitm.connections > before  # the browser really went through the interceptor
            # The intercepted response never loaded (the warning page alone would hide that).  Both the
            # listener's {cancel: true} and the tab update to the warning page, made while the
            # response is held, stop it; either alone passes this check, removing both fails it.
            events = [(e["method"], e["params"]["url"]) for e in bidi.events
                      if e.get("params", {}).get("context") == tab]
            assert ("browsingContext.load", mitm_url) not in events, events
            assert ("browsingContext.navigationFailed", mitm_url) in events, events
            page = await wait("the warning page to render", lambda: bidi.evaluate(tab, WARNING_JS))
            assert page["site"] == mitm_url and page["summary"].startswith("MITM suspected"), page
            assert "hello from the site" not in page["body"]
            await _save(bidi, tab, ARTIFACTS / "helper-blocked-firefox.png")
            # The session rule now redirects the origin before any connection is made.
            before = mitm.connections
            again = await bidi.new_tab()
            with contextlib.suppress(BiDiError):
                await bidi.navigate(again, mitm_url, wait="none")
            await wait("the warning page again", lambda: _at(bidi, again, blocked_url))
            assert mitm.connections == before
            await bidi.send("browsingContext.close", {"context": again})
            # The clean site is not blocked.
            clean_tab = await bidi.new_tab(clean_url)
            assert await bidi.url_of(clean_tab) == clean_url
            assert "hello from the site" in (await bidi.evaluate(clean_tab, "document.body.textContent"))

            # 4. "Proceed anyway (this session)", clicked for real: the page loads, still flagged.
            await bidi.click(tab, "#proceed")
            await wait("the site after proceeding", lambda: _at(bidi, tab, mitm_url))
            body = await wait("the site's page", lambda: bidi.evaluate(tab, "document.body && document.body.textContent"))
            assert "hello from the site" in body
            key = f"bypass:mitm.test:{site.port}"
            assert await b.in_extension(f"browser.storage.session.get({json.dumps(key)})") == {key: True}
            assert await b.in_extension("browser.declarativeNetRequest.getSessionRules()") == []
            after = await b.badge(mitm_url)
            assert after["status"] == "mitm_suspected" and after["text"] == "!"  # advisory, not forgotten




async def test_popup_lists_proxy_vantages_in_firefox(tmp_path: Path) -> None:
    """As in Chromium: the helper's ``via`` proxies (a real Dante proxy that saw the site's key,
    and one nobody listens on) are unsigned rows after the notaries' in the popup.  Here the
    helper compares the browser's own chain (``client.source == "supplied"``).  Needs danted (root)."""
    require_dante()
    ca = trustme.CA(organization_name="Parallax test site CA")
    site_ctx, site_pin = context_and_pin(ca, ("localhost",))
    helper_log, firefox_log = tmp_path / "helper.log", tmp_path / "firefox.log"
    ext_uuid = str(uuid.uuid4())
    (tmp_path / "dante").mkdir()
    with running_dante(tmp_path / "dante") as dante:
        dead = f"socks5://127.0.0.1:{free_port()}"
        async with tls_site(site_ctx, host="127.0.0.1") as site, \
                local_cluster(3, tmp_path / "cluster", resolver=StaticResolver({"localhost": ["127.0.0.1"]})) as cluster, \
                firefox_with_extension(tmp_path, cluster.bundle_path, ext_uuid, helper_log, firefox_log,
                                       {"parallax-site-ca": ca}, {"via": [dante.url, dead]}) as bidi:
            b = Browser(bidi, ext_uuid)
            b.POPUP_JS = POPUP_ROWS_JS
            await b.attach_extension_page()
            url = f"https://localhost:{site.port}/"
            await bidi.new_tab(url)
            got = await b.badge(url)
            assert got["status"] in ("consistent", "consistent_with_outliers"), json.dumps(got)[:3000]
            assert got["verdict"]["client"]["source"] == "supplied"
            dom = await b.popup(got["tabId"], ARTIFACTS / "helper-popup-firefox-proxies.png")
    rows = dom["cells"]
    assert [r["kind"] for r in rows] == ["notary"] * 3 + ["proxy"] * 2, rows
    live, gone = rows[3:]
    for r in (live, gone):
        assert r["texts"][1].startswith("proxy (unsigned") and r["texts"][4] == "-", r
    assert live["result"] == "agrees" and live["texts"][2].startswith(f"sha256/{site_pin[:12]}"), live
    assert gone["result"] == "proxy_failed" and gone["texts"][2] == "-", gone
