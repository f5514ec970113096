"use strict";

const api = globalThis.browser ?? globalThis.chrome;
const box = document.getElementById("block");

api.storage.local.get({ blockOnMitm: false }).then((o) => {
  box.checked = o.blockOnMitm === true;
});
box.addEventListener("change", () => api.storage.local.set({ blockOnMitm: box.checked }));

api.runtime.sendMessage({ type: "ping" }).then((r) => {
  const el = document.getElementById("helper");
  if (r && r.type === "pong") {
    const b = r.bundle || {};
    el.textContent = `version ${r.version}, policy ${r.policy}, ` +
      (b.error ? `bundle problem: ${b.error}` : `${b.notaries} notaries from ${b.path}`);
  } else {
    el.textContent = `not available (${(r && (r.error || r.message)) || "no answer"}); run 'parallax helper install'`;
  }
});
