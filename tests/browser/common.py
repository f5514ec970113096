"""What the real-browser end-to-end tests share, whatever the browser and its protocol.

* :class:`JsonRpcSocket`: a JSON-over-WebSocket command/response client (ids, waiting
  futures, an event list); ``cdp.py`` and ``bidi.py`` add their protocol's framing on top;
* :func:`launch`, :func:`wait_ready`, :func:`connected`: start a browser in its own process
  group, wait for its remote port, connect, and tear it all down again;
* the test world: certificates and pins (:func:`context_and_pin`), the real site, the
  interceptor and the notary cluster (:func:`notary_world`), the helper's environment,
  polling (:func:`wait`), popup screenshots and the extension-page driver (:class:`ExtensionBrowser`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import signal
import ssl
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Sequence, TypeVar

import aiohttp
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from client.cluster import local_cluster
from client.devtools import StaticResolver, TLSSite, interceptor, tls_site

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NAMES = ("clean.test", "mitm.test")

T = TypeVar("T")
C = TypeVar("C", bound="JsonRpcSocket")


class ProtocolError(Exception):
    """A browser protocol failed (base of ``CDPError`` and ``BiDiError``)."""


# --- WebSocket JSON-RPC plumbing ---------------------------------------------------------

class JsonRpcSocket:
    error: type[ProtocolError] = ProtocolError

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls: type[C], url: str) -> C:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, max_msg_size=64 << 20, timeout=aiohttp.ClientWSTimeout(ws_close=2))
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    def _is_event(self, data: dict[str, Any]) -> bool:
        return False

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            fut = self._waiting.pop(data.get("id", -1), None) if not self._is_event(data) else None
            if fut is not None:
                if not fut.done():
                    fut.set_result(data)
            else:
                self.events.append(data)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(self.error("browser connection closed"))

    async def _call(self, method: str, params: dict[str, Any] | None, timeout: float, **extra: Any) -> dict[str, Any]:
        """Send one command and return the browser's whole answer to it."""
        i = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        await self._ws.send_str(json.dumps({"id": i, "method": method, "params": params or {}, **extra}))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(i, None)

    async def send(self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 15.0) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._ws.close()
        await self._session.close()


# --- browser process ----------------------------------------------------------------------

@contextlib.asynccontextmanager
async def launch(argv: Sequence[str], *, env: dict[str, str] | None,
                 log_path: Path | None) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own process group (output to ``log_path``); kill the whole group at the end."""
    log = open(log_path or os.devnull, "wb")
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 5)
        log.close()


async def wait_ready(proc: subprocess.Popen[bytes], name: str, probe: Callable[[], T | None], *,
                     error: type[ProtocolError], timeout: float, late: str, log_path: Path | None) -> T:
    """Poll ``probe`` until it returns something, failing if the browser exits or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc.poll() is not None:
            raise error(f"{name} exited with {proc.returncode} (log: {log_path})")
        got = probe()
        if got is not None:
            return got
        if loop.time() > deadline:
            raise error(late)
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def connected(cls: type[C], url: str, close_method: str) -> AsyncIterator[C]:
    """Connect to the browser at ``url``; at the end ask it to close (``close_method``) and disconnect."""
    client = await cls.connect(url)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.send(close_method), 3)
        await client.close()


# --- the test world -----------------------------------------------------------------------

def context_and_pin(ca: trustme.CA, names: tuple[str, ...] = NAMES) -> tuple[ssl.SSLContext, str]:
    """A server context with a leaf for ``names`` issued by ``ca``, and the leaf's SPKI pin."""
    leaf = ca.issue_cert(*names)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return ctx, base64.b64encode(hashlib.sha256(spki).digest()).decode()


@dataclass
class World:
    site_ca: trustme.CA
    forged_ca: trustme.CA
    site_pin: str
    forged_pin: str
    site: TLSSite
    mitm: TLSSite
    clean_site: TLSSite
    cluster: Any


@contextlib.asynccontextmanager
async def notary_world(tmp_path: Path, *, site_host: str, mitm_host: str, resolver: StaticResolver,
                       clean_site_host: str | None = None) -> AsyncIterator[World]:
    """The real site on ``site_host``, an interceptor (forged certificate) on ``mitm_host`` at the same
    port relaying to it, optionally a second listener of the real site (``clean_site_host``), and a
    local cluster of three notaries resolving names with ``resolver``."""
    site_ca = trustme.CA(organization_name="Parallax test site CA")
    forged_ca = trustme.CA(organization_name="Interceptor CA")  # as if the user had installed it
    site_ctx, site_pin = context_and_pin(site_ca)
    forged_ctx, forged_pin = context_and_pin(forged_ca)
    async with contextlib.AsyncExitStack() as stack:
        site = await stack.enter_async_context(tls_site(site_ctx, host=site_host))
        mitm = await stack.enter_async_context(
            interceptor(forged_ctx, (site_host, site.port), sni="mitm.test", host=mitm_host, port=site.port))
        clean_site = site
        if clean_site_host is not None:
            clean_site = await stack.enter_async_context(tls_site(site_ctx, host=clean_site_host))
        cluster = await stack.enter_async_context(local_cluster(3, tmp_path / "cluster", resolver=resolver))
        yield World(site_ca, forged_ca, site_pin, forged_pin, site, mitm, clean_site, cluster)


def helper_env(tmp_path: Path, helper_log: Path, **extra: str) -> dict[str, str]:
    """The browser's environment: the helper logs to ``helper_log`` and sees no stray user config."""
    return {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),  # no stray user helper.json / bundle
        "PARALLAX_HELPER_LOG": str(helper_log),
        "PARALLAX_LOG": "DEBUG",
        **extra,
    }


@contextlib.contextmanager
def logs_on_failure(*paths: Path) -> Iterator[None]:
    """On any failure, print the tail of each log in ``paths`` that exists."""
    try:
        yield
    except BaseException:
        for p in paths:
            if p.exists():
                print(f"--- {p.name} ---\n{p.read_text(errors='replace')[-6000:]}")
        raise


async def wait(what: str, probe: Any, timeout: float = 30.0, interval: float = 0.25) -> Any:
    """Poll ``probe`` until it returns something truthy; a protocol error counts as not yet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while loop.time() < deadline:
        try:
            last = await probe()
        except ProtocolError as exc:  # e.g. the page is still loading: its context is not there yet
            last = exc
        if last and not isinstance(last, ProtocolError):
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def save_png(shot: Path, data: str) -> None:
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.write_bytes(base64.b64decode(data))


def badge_js(ns: str, url: str, extra: str = "") -> str:
    """JS returning the badge and state of the first tab whose URL (``url``, a JS expression of the
    tab ``t``) starts with ``%s`` (to be filled with a JSON string); ``ns``: ``chrome`` or ``browser``;
    ``extra``: more fields of the result, each starting with ``, ``."""
    return string.Template("""(async () => {
  const tabs = (await $ns.tabs.query({})).filter(t => ($url).startsWith(%s));
  if (!tabs.length) return null;
  const tabId = tabs[0].id;
  const text = await $ns.action.getBadgeText({tabId});
  const color = await $ns.action.getBadgeBackgroundColor({tabId});
  const state = (await $ns.storage.session.get("tab:" + tabId))["tab:" + tabId] || null;
  return {tabId, text, color, url: tabs[0].url, status: state && state.status, verdict: state && state.verdict,
          error: state && state.error$extra};
})()""").substitute(ns=ns, url=url, extra=extra)


def write_helper_config(env: dict[str, str], doc: dict[str, Any]) -> Path:
    """Write the helper's ``helper.json`` (``doc``) under the browser environment's ``XDG_CONFIG_HOME``."""
    config = Path(env["XDG_CONFIG_HOME"]) / "parallax" / "helper.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(doc))
    return config


def popup_js(extra: str = "") -> str:
    """JS returning the popup's DOM once it is ready (null before); ``extra``: more fields, each a line."""
    return string.Template("""(() => {
  if (!document.body || document.body.dataset.ready !== "1") return null;
  const box = document.getElementById("status");
  return {status: box.dataset.status, label: document.getElementById("status-text").textContent,
          color: box.className, summary: document.getElementById("summary").textContent,
$extra          rows: [...document.querySelectorAll("#notaries tbody tr")].map(tr => tr.dataset.result),
          height: document.documentElement.scrollHeight};
})()""").substitute(extra=extra)


#: The popup's rows with their kind and cell texts (proxy rows carry ``data-kind="proxy"``).
POPUP_ROWS_JS = popup_js("""          cells: [...document.querySelectorAll("#notaries tbody tr")].map(tr =>
            ({kind: tr.dataset.kind || "notary", result: tr.dataset.result,
              texts: [...tr.children].map(td => td.textContent)})),
""")


class ExtensionBrowser:
    """Drives the extension through one of its own pages; subclasses speak the browser's protocol.

    ``NS`` is the extension API namespace (``chrome`` or ``browser``); ``BADGE_JS`` (see
    :func:`badge_js`) and ``POPUP_JS`` (see :func:`popup_js`) read the badge and the popup.
    """

    NS: str
    BADGE_JS: str
    POPUP_JS: str

    def __init__(self, base: str) -> None:
        self.base = base  # the extension's origin, with a final "/"
        self.page: Any = ""

    # Protocol-specific steps.
    async def evaluate(self, page: Any, js: str) -> Any:
        raise NotImplementedError

    async def _open(self, url: str) -> Any:
        """Open a new page for ``url``; return a handle to it."""
        raise NotImplementedError

    async def _load(self, handle: Any, url: str) -> Any:
        """Make sure the page ``handle`` shows ``url``; return where to evaluate in it."""
        raise NotImplementedError

    async def _set_height(self, handle: Any, height: int) -> None:
        """Set the page's viewport to 490 x ``height``."""
        raise NotImplementedError

    async def _screenshot(self, handle: Any) -> str:
        """A PNG of the page, base64-encoded."""
        raise NotImplementedError

    async def _close(self, handle: Any) -> None:
        raise NotImplementedError

    # Shared.
    async def attach_extension_page(self) -> None:
        """Evaluate extension APIs (tabs, action, storage) in one of the extension's own pages.

        The page has the same extension APIs as the background script, and unlike a service
        worker it is not stopped or restarted by the browser while the test holds it.
        """
        url = f"{self.base}popup.html?tab=0"
        self.page = await self._load(await self._open(url), url)
        await wait("the extension page", lambda: self.evaluate(
            self.page, f"typeof {self.NS}.action === 'object' && document.readyState === 'complete'"), 10)

    async def in_extension(self, js: str) -> Any:
        return await self.evaluate(self.page, js)

    async def badge(self, url_prefix: str) -> dict[str, Any]:
        """The badge and state of the tab at ``url_prefix`` once its check has finished."""
        async def final() -> dict[str, Any] | None:
            b = await self.in_extension(self.BADGE_JS % json.dumps(url_prefix))
            return b if b and b["status"] not in (None, "checking") else None

        return await wait(f"a verdict for {url_prefix}", final)

    async def expect_consistent(self, url: str, *, pin: str, shot: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """The badge and popup of a clean page: consistent, a green "OK", the site's key; the popup
        has 3 rows, 2 or 3 agreeing (the helper stops once more answers cannot change the outcome)."""
        clean = await self.badge(url)
        assert clean["status"] == "consistent", json.dumps(clean)[:3000]
        assert clean["text"] == "OK"
        assert clean["color"][:3] == [0x1A, 0x7F, 0x37]
        assert clean["verdict"]["client"]["pin"] == f"sha256/{pin}"
        dom = await self.popup(clean["tabId"], shot)
        assert dom["status"] == "consistent" and "green" in dom["color"]
        assert len(dom["rows"]) == 3 and dom["rows"].count("agrees") >= 2 and "disagrees" not in dom["rows"]
        assert dom["summary"].startswith("consistent: ")
        return clean, dom

    async def expect_mitm(self, url: str, *, site_pin: str, forged_pin: str,
                          shot: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """The badge and popup of an intercepted page: mitm_suspected, a red "!", the forged key seen
        and the site's key as the quorum's; 2 or 3 rows disagree; advisory: the page stayed loaded."""
        bad = await self.badge(url)
        assert bad["status"] == "mitm_suspected", json.dumps(bad)[:3000]
        assert bad["text"] == "!"
        assert bad["color"][:3] == [0xCF, 0x22, 0x2E]
        assert bad["verdict"]["client"]["pin"] == f"sha256/{forged_pin}"
        assert bad["verdict"]["quorum_pins"] == [f"sha256/{site_pin}"]
        dom = await self.popup(bad["tabId"], shot)
        assert dom["status"] == "mitm_suspected" and "red" in dom["color"]
        assert len(dom["rows"]) == 3 and dom["rows"].count("disagrees") >= 2 and "agrees" not in dom["rows"]
        assert dom["summary"].startswith("MITM suspected")
        assert bad["url"].startswith(url)  # advisory by default: the page stayed loaded
        return bad, dom

    async def popup(self, tab_id: int, shot: Path) -> dict[str, Any]:
        """Render the popup for ``tab_id``, save its screenshot to ``shot`` and return its DOM."""
        url = f"{self.base}popup.html?tab={tab_id}"
        handle = await self._open(url)
        try:
            await self._set_height(handle, 420)
            page = await self._load(handle, url)
            dom = await wait("the popup to render", lambda: self.evaluate(page, self.POPUP_JS), 10)
            await self._set_height(handle, int(dom["height"]))
            save_png(shot, await self._screenshot(handle))
            return dom
        finally:
            await self._close(handle)
