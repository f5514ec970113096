// Firefox blocking mode: a mitm_suspected navigation is cancelled; after the user
// chooses "Proceed anyway" on the warning page, the next navigation goes through.
const { load, msg } = require("./harness");
(async () => {
  const env = load(true, (m) => ({ type: "verdict", id: m.id, cached: false, verdict: { status: "mitm_suspected", summary: "MITM suspected" } }));
  await env.api.storage.local.set({ blockOnMitm: true });
  const nav = async (rid) => {
    const d = { tabId: 7, requestId: rid, url: "https://bank.test/", ip: "192.0.2.1" };
    env.api.webRequest.onBeforeRequest.ls[0](d);
    return await env.api.webRequest.onHeadersReceived.ls[0](d);
  };
  const first = await nav("r1");
  const proceed = await msg(env, { type: "proceed", host: "bank.test", port: 443 },
    { id: "EXT", url: "moz-extension://EXT/blocked.html?host=bank.test&port=443", frameId: 0 });
  const second = await nav("r2");
  console.log(JSON.stringify({ first, proceed, second }));
})();
