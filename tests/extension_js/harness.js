// The WebExtension APIs are mocked here (a seam: no Firefox in this test tier); background.js runs unmodified.
// Minimal WebExtension API mock to run background.js under node.
const fs = require("fs");
const vm = require("vm");
function mkEvent() { const ls = []; return { addListener: (f) => ls.push(f), ls }; }
function makeApi(firefox, helperReply) {
  const local = { blockOnMitm: true };
  const sess = {};
  let rules = [];
  const log = [];
  const onMessage = mkEvent();
  const port = { onMessage: mkEvent(), onDisconnect: mkEvent(),
    postMessage(m) { log.push(["native", m]); setTimeout(() => port.onMessage.ls.forEach((f) => f(helperReply(m))), 1); } };
  const api = {
    runtime: { id: "EXT", getURL: (p) => "moz-extension://EXT/" + p, connectNative: () => port, onMessage, lastError: null },
    storage: {
      local: { get: async (d) => ({ ...d, ...local }), set: async (o) => Object.assign(local, o) },
      session: { get: async (k) => (k in sess ? { [k]: sess[k] } : {}), set: async (o) => Object.assign(sess, o), remove: async (k) => delete sess[k] },
    },
    action: { setBadgeText: async () => {}, setBadgeBackgroundColor: async () => {}, setTitle: async () => {} },
    webRequest: { onBeforeRequest: mkEvent(), onHeadersReceived: mkEvent(), onResponseStarted: mkEvent(), onErrorOccurred: mkEvent() },
    webNavigation: { onCommitted: mkEvent() },
    tabs: { onRemoved: mkEvent(), update: async (id, o) => log.push(["tabs.update", id, o.url]) },
    declarativeNetRequest: {
      getSessionRules: async () => rules,
      updateSessionRules: async (o) => { if (o.removeRuleIds) rules = rules.filter((r) => !o.removeRuleIds.includes(r.id)); if (o.addRules) rules = rules.concat(o.addRules); log.push(["dnr", JSON.stringify(o)]); },
    },
  };
  if (firefox) api.webRequest.getSecurityInfo = async () => ({ certificates: [{ rawDER: [48, 3, 2, 1, 0] }] });
  return { api, sess, log, rulesRef: () => rules };
}
function load(firefox, helperReply) {
  const env = makeApi(firefox, helperReply);
  const ctx = { console, setTimeout, clearTimeout, URL, URLSearchParams, btoa, Uint8Array, String, Number, Map, Promise, Date, globalThis: {} };
  ctx.globalThis.browser = env.api;
  vm.createContext(ctx);
  vm.runInContext(fs.readFileSync(require("path").join(__dirname, "..", "..", "client", "helper", "extension", "background.js"), "utf8"), ctx);
  return env;
}
function msg(env, m, sender) {
  return new Promise((res) => env.api.runtime.onMessage.ls[0](m, sender, res));
}
module.exports = { load, msg };
