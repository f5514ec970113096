// A web page opens blocked.html?host=bank.test itself and the user clicks "Proceed":
// that must not pre-approve bank.test, so a later real interception is still blocked.
const { load, msg } = require("./harness");
(async () => {
  const env = load(false, (m) => ({ type: "verdict", id: m.id, cached: false, verdict: { status: "mitm_suspected", summary: "MITM suspected" } }));
  await env.api.storage.local.set({ blockOnMitm: true });
  const proceed = await msg(env, { type: "proceed", host: "bank.test", port: 443 },
    { id: "EXT", url: "moz-extension://EXT/blocked.html?host=bank.test&port=443", frameId: 0 });
  const d = { tabId: 9, requestId: "r9", url: "https://bank.test/login", ip: "192.0.2.1" };
  env.api.webRequest.onBeforeRequest.ls[0](d);
  env.api.webRequest.onResponseStarted.ls[0](d);
  await new Promise((r) => setTimeout(r, 50));
  console.log(JSON.stringify({
    proceed, status: env.sess["tab:9"].status,
    redirects: env.log.filter((l) => l[0] === "tabs.update").length, rules: env.rulesRef().length,
  }));
})();
