// The badge for statuses besides consistent/mitm_suspected: the declared interceptor is amber "i"
// (and never blocked), key_changed and pin_mismatch are red "!".
const { load } = require("./harness");
(async () => {
  const out = {};
  for (const status of ["intercepted_as_expected", "key_changed", "pin_mismatch", "insufficient"]) {
    const env = load(false, (m) => ({ type: "verdict", id: m.id, cached: false, verdict: { status, summary: status } }));
    await env.api.storage.local.set({ blockOnMitm: true });
    const badges = [];
    env.api.action.setBadgeText = async (o) => badges.push(o.text);
    env.api.action.setBadgeBackgroundColor = async (o) => badges.push(o.color);
    const d = { tabId: 3, requestId: "r3", url: "https://corp.test/", ip: "192.0.2.1" };
    env.api.webRequest.onBeforeRequest.ls[0](d);
    env.api.webRequest.onResponseStarted.ls[0](d);
    await new Promise((r) => setTimeout(r, 50));
    out[status] = { badge: badges.slice(-2), redirects: env.log.filter((l) => l[0] === "tabs.update").length };
  }
  console.log(JSON.stringify(out));
})();
