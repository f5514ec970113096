// Parallax browser helper: the background script (an MV3 service worker in
// Chromium, an event page in Firefox).
//
// On every top-level HTTPS navigation it asks the local helper (native
// messaging host "org.parallax.helper") for a verdict:
//   * Chromium: host, port and the IP the browser connected to; the helper
//     probes that address itself, from this machine.
//   * Firefox: the certificate chain the browser actually received
//     (webRequest.getSecurityInfo in a blocking onHeadersReceived listener).
// The toolbar badge shows the result per tab: green "OK" (consistent), red
// "!" (mitm_suspected, key_changed, pin_mismatch), amber "i"
// (intercepted_as_expected: the interceptor the user declared), grey otherwise.  Advisory by default; with the
// "block" option a tab whose verdict is mitm_suspected is sent to a warning
// page and later navigations to that origin are redirected there.
"use strict";

const api = globalThis.browser ?? globalThis.chrome;
const HELPER = "org.parallax.helper";
const IS_FIREFOX = typeof api.webRequest?.getSecurityInfo === "function";
const REQUEST_TIMEOUT_MS = 45000;
const COLORS = { green: "#1a7f37", red: "#cf222e", amber: "#9a6700", grey: "#6e7781" };
const HTTPS = { urls: ["https://*/*"], types: ["main_frame"] };
const OWN_PAGES = api.runtime.getURL("");

// ---------------------------------------------------------------- helper link

let port = null;
let nextId = 1;
const pending = new Map(); // request id -> {resolve, reject, timer}

function connect() {
  if (port) return port;
  const p = api.runtime.connectNative(HELPER);
  p.onMessage.addListener((msg) => {
    const waiter = msg && pending.get(msg.id);
    if (!waiter) {
      console.warn("parallax: helper message without a waiting request", msg);
      return;
    }
    pending.delete(msg.id);
    clearTimeout(waiter.timer);
    waiter.resolve(msg);
  });
  p.onDisconnect.addListener(() => {
    const why = api.runtime.lastError?.message || p.error?.message || "the helper exited";
    if (port === p) port = null;
    for (const waiter of pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error(why));
    }
    pending.clear();
  });
  port = p;
  return p;
}

function ask(request) {
  return new Promise((resolve, reject) => {
    const id = `r${nextId++}`;
    const timer = setTimeout(() => {
      pending.delete(id);
      reject(new Error("the helper did not answer in time"));
    }, REQUEST_TIMEOUT_MS);
    pending.set(id, { resolve, reject, timer });
    try {
      connect().postMessage({ ...request, id });
    } catch (e) {
      pending.delete(id);
      clearTimeout(timer);
      reject(e);
    }
  });
}

// ---------------------------------------------------------------- per-tab state

const memory = new Map();
const session = api.storage.session;
const tabKey = (tabId) => `tab:${tabId}`;

async function getState(tabId) {
  if (memory.has(tabId)) return memory.get(tabId);
  if (!session) return undefined;
  const got = await session.get(tabKey(tabId));
  const s = got[tabKey(tabId)];
  if (s) memory.set(tabId, s);
  return s;
}

async function setState(tabId, s) {
  memory.set(tabId, s);
  await paint(tabId, s); // paint first: a stored state is always one the badge already shows
  if (session) await session.set({ [tabKey(tabId)]: s });
}

async function clearState(tabId, repaint = true) {
  memory.delete(tabId);
  if (session) await session.remove(tabKey(tabId));
  if (repaint) await paint(tabId, null);
}

function look(s) {
  if (!s) return { text: "", color: COLORS.grey, title: "Parallax: only HTTPS pages are checked" };
  const summary = s.verdict?.summary;
  switch (s.status) {
    case "checking":
      return { text: "…", color: COLORS.grey, title: `Parallax: asking the notaries about ${s.host}` };
    case "consistent":
    case "consistent_with_outliers":
      return { text: "OK", color: COLORS.green, title: `Parallax: ${summary}` };
    case "mitm_suspected":
    case "key_changed":
    case "pin_mismatch":
      return { text: "!", color: COLORS.red, title: `Parallax WARNING: ${summary}` };
    case "intercepted_as_expected":
      return { text: "i", color: COLORS.amber, title: `Parallax: ${summary}` };
    case "error":
      return { text: "?", color: COLORS.grey, title: `Parallax: no verdict (${s.error})` };
    default:
      return { text: "?", color: COLORS.grey, title: `Parallax: ${summary || s.status}` };
  }
}

async function paint(tabId, s) {
  const l = look(s);
  try {
    await api.action.setBadgeText({ tabId, text: l.text });
    await api.action.setBadgeBackgroundColor({ tabId, color: l.color });
    if (api.action.setBadgeTextColor) await api.action.setBadgeTextColor({ tabId, color: "#ffffff" });
    await api.action.setTitle({ tabId, title: l.title });
  } catch (e) {
    // the tab is gone
  }
}

function parseTarget(url) {
  let u;
  try {
    u = new URL(url);
  } catch (e) {
    return null;
  }
  if (u.protocol !== "https:") return null;
  return { host: u.hostname.replace(/^\[|\]$/g, ""), port: u.port ? Number(u.port) : 443 };
}

async function options() {
  const o = await api.storage.local.get({ blockOnMitm: false });
  return { blockOnMitm: o.blockOnMitm === true };
}

// ---------------------------------------------------------------- checks

async function runCheck(tabId, url, requestId, extra, fresh = false) {
  const t = parseTarget(url);
  if (!t) return null;
  let s = await getState(tabId);
  if (!s || s.requestId !== requestId || fresh) {
    s = { url, host: t.host, port: t.port, requestId, status: "checking", startedAt: Date.now() };
    await setState(tabId, s);
  }
  s = { ...s, extra };
  let next;
  try {
    const resp = await ask({ type: "check", host: t.host, port: t.port, ...extra, ...(fresh ? { fresh: true } : {}) });
    if (resp.type === "verdict") {
      next = { ...s, status: resp.verdict.status, verdict: resp.verdict, cached: !!resp.cached, checkedAt: Date.now() };
    } else {
      next = { ...s, status: "error", error: resp.message || resp.error || "the helper answered an error" };
    }
  } catch (e) {
    next = { ...s, status: "error", error: String(e?.message || e) };
  }
  const now = await getState(tabId);
  if (!now || now.requestId !== requestId) return next; // the tab has moved on
  await setState(tabId, next);
  if (next.status === "mitm_suspected") await onMitm(tabId, next);
  return next;
}

const originKey = (host, port) => `${host.includes(":") ? `[${host}]` : host}:${port}`;

async function onMitm(tabId, s) {
  if (!(await options()).blockOnMitm) return;
  const key = originKey(s.host, s.port);
  if (session && (await session.get(`bypass:${key}`))[`bypass:${key}`]) return;
  if (session) await session.set({ [`blocked:${key}`]: s });
  await addBlockRule(s.host, s.port);
  const page = `blocked.html?host=${encodeURIComponent(s.host)}&port=${s.port}`;
  try {
    await api.tabs.update(tabId, { url: api.runtime.getURL(page) });
  } catch (e) {
    console.warn("parallax: cannot show the warning page", e);
  }
}

async function addBlockRule(host, port) {
  const dnr = api.declarativeNetRequest;
  if (!dnr?.updateSessionRules) return;
  const origin = `https://${originKey(host, port).replace(/:443$/, "")}/`;
  const rules = await dnr.getSessionRules();
  if (rules.some((r) => r.condition.urlFilter === `|${origin}`)) return;
  const id = rules.reduce((m, r) => Math.max(m, r.id), 0) + 1;
  await dnr.updateSessionRules({
    addRules: [{
      id,
      priority: 1,
      action: { type: "redirect", redirect: { extensionPath: `/blocked.html?host=${encodeURIComponent(host)}&port=${port}` } },
      condition: { urlFilter: `|${origin}`, resourceTypes: ["main_frame"] },
    }],
  });
}

async function removeBlockRule(host, port) {
  const dnr = api.declarativeNetRequest;
  if (!dnr?.updateSessionRules) return;
  const origin = `https://${originKey(host, port).replace(/:443$/, "")}/`;
  const rules = await dnr.getSessionRules();
  const ids = rules.filter((r) => r.condition.urlFilter === `|${origin}`).map((r) => r.id);
  if (ids.length) await dnr.updateSessionRules({ removeRuleIds: ids });
}

// ---------------------------------------------------------------- navigation hooks

api.webRequest.onBeforeRequest.addListener((d) => {
  if (d.tabId < 0) return;
  const t = parseTarget(d.url);
  if (!t) return;
  setState(d.tabId, { url: d.url, host: t.host, port: t.port, requestId: d.requestId, status: "checking", startedAt: Date.now() });
}, HTTPS);

if (IS_FIREFOX) {
  // Firefox: the chain this browser received, read while the response is held.
  api.webRequest.onHeadersReceived.addListener(async (d) => {
    if (d.tabId < 0) return {};
    const extra = {};
    try {
      const info = await api.webRequest.getSecurityInfo(d.requestId, { certificateChain: true, rawDER: true });
      const chain = (info?.certificates || []).map((c) => c.rawDER).filter((der) => der && der.length);
      if (chain.length) extra.chain = chain.map(derToBase64);
    } catch (e) {
      console.warn("parallax: getSecurityInfo failed", e);
    }
    if (!extra.chain && d.ip) extra.ip = d.ip;
    const done = runCheck(d.tabId, d.url, d.requestId, extra);
    if (!(await options()).blockOnMitm) return {};
    const s = await done; // blocking mode: hold the response until the verdict
    if (!s || s.status !== "mitm_suspected") return {};
    const t = parseTarget(d.url);
    const key = originKey(t.host, t.port);
    if (session && (await session.get(`bypass:${key}`))[`bypass:${key}`]) return {}; // user chose to proceed
    return { cancel: true };
  }, HTTPS, ["blocking"]);
} else {
  // Chromium: the helper probes the address this browser connected to.
  api.webRequest.onResponseStarted.addListener((d) => {
    if (d.tabId < 0) return;
    runCheck(d.tabId, d.url, d.requestId, d.ip ? { ip: d.ip } : {});
  }, HTTPS);
}

api.webRequest.onErrorOccurred.addListener(async (d) => {
  if (d.tabId < 0) return;
  const s = await getState(d.tabId);
  if (s && s.requestId === d.requestId && s.status === "checking") {
    await setState(d.tabId, { ...s, status: "error", error: `navigation failed (${d.error})` });
  }
}, HTTPS);

// Chromium clears tab-specific badges when a navigation commits, so paint again then.
api.webNavigation.onCommitted.addListener(async (d) => {
  if (d.frameId !== 0) return;
  const s = await getState(d.tabId);
  if (d.url.startsWith(OWN_PAGES)) {
    // Our warning page (reached by tabs.update or by the redirect rule): show that origin's verdict.
    const q = new URL(d.url).searchParams;
    const key = q.has("host") ? `blocked:${originKey(q.get("host"), Number(q.get("port")))}` : null;
    const blocked = key && session ? (await session.get(key))[key] : null;
    if (blocked) await setState(d.tabId, { ...blocked, requestId: `blocked:${d.timeStamp}` });
    else if (s) await paint(d.tabId, s);
    return;
  }
  const t = parseTarget(d.url);
  if (!t) {
    await clearState(d.tabId);
    return;
  }
  if (s && s.host === t.host && s.port === t.port) {
    await paint(d.tabId, s);
  } else if (!s || s.status !== "checking") {
    // Committed without a network request we saw (back/forward cache): check it anyway.
    runCheck(d.tabId, d.url, `nav:${d.timeStamp}`, {});
  }
});

api.tabs.onRemoved.addListener((tabId) => clearState(tabId, false));

function derToBase64(der) {
  const bytes = der instanceof Uint8Array ? der : Uint8Array.from(der);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

// ---------------------------------------------------------------- messages from our pages

api.runtime.onMessage.addListener((msg, sender, sendResponse) => {
  if (sender.id !== api.runtime.id || !String(sender.url || "").startsWith(OWN_PAGES)) return false;
  (async () => {
    switch (msg?.type) {
      case "recheck": {
        const s = await getState(msg.tabId);
        if (!s) return { ok: false, error: "this tab has no HTTPS page to check" };
        return { ok: true, state: await runCheck(msg.tabId, s.url, s.requestId, s.extra || {}, true) };
      }
      case "proceed": {
        if (sender.frameId !== 0) return { ok: false, error: "not from a top-level page" }; // no framed clickjacking
        const key = originKey(msg.host, msg.port);
        // Only a site this extension actually blocked can be bypassed: a page that opens
        // blocked.html?host=... itself must not pre-approve a site.
        if (!session || !(await session.get(`blocked:${key}`))[`blocked:${key}`]) {
          return { ok: false, error: "this site was not blocked" };
        }
        await session.set({ [`bypass:${key}`]: true });
        await removeBlockRule(msg.host, msg.port);
        return { ok: true };
      }
      case "ping":
        return await ask({ type: "ping" });
      default:
        return { ok: false, error: "unknown message" };
    }
  })().then(sendResponse, (e) => sendResponse({ ok: false, error: String(e?.message || e) }));
  return true;
});
