"use strict";

const api = globalThis.browser ?? globalThis.chrome;
if (window.top !== window) throw new Error("the Parallax warning page does not work in a frame");
const q = new URLSearchParams(location.search);
const host = q.get("host") || "";
const port = Number(q.get("port") || 443);
const origin = `https://${host.includes(":") ? `[${host}]` : host}${port === 443 ? "" : `:${port}`}/`;

document.getElementById("site").textContent = origin;
const key = `blocked:${host.includes(":") ? `[${host}]` : host}:${port}`;
if (api.storage.session) {
  api.storage.session.get(key).then((o) => {
    const s = o[key];
    if (s && s.verdict) document.getElementById("summary").textContent = s.verdict.summary;
  });
}
document.getElementById("back").addEventListener("click", () => history.length > 1 ? history.back() : window.close());
document.getElementById("proceed").addEventListener("click", async () => {
  await api.runtime.sendMessage({ type: "proceed", host, port });
  location.href = origin;
});
