// The toolbar popup: the verdict for one tab (the active tab, or ?tab=ID).
"use strict";

const api = globalThis.browser ?? globalThis.chrome;

const LABELS = {
  none: "Not checked",
  checking: "Checking…",
  consistent: "Consistent",
  consistent_with_outliers: "Consistent (with outliers)",
  mitm_suspected: "MITM suspected",
  split_view: "Split view",
  insufficient: "Insufficient answers",
  unreachable: "Unreachable",
  error: "No verdict",
};

const $ = (id) => document.getElementById(id);

function shortPin(pin) {
  return pin && pin.length > 24 ? `${pin.slice(0, 19)}…` : pin || "-";
}

function colorOf(status) {
  if (status === "consistent" || status === "consistent_with_outliers") return "green";
  if (status === "mitm_suspected") return "red";
  return "grey";
}

async function tabId() {
  const q = new URLSearchParams(location.search).get("tab");
  if (q) return Number(q);
  const [tab] = await api.tabs.query({ active: true, currentWindow: true });
  return tab ? tab.id : -1;
}

function render(s) {
  const status = s ? s.status : "none";
  const box = $("status");
  box.dataset.status = status;
  box.className = `status ${colorOf(status)}`;
  $("status-text").textContent = LABELS[status] || status;
  const v = s && s.verdict;
  let summary = "Only top-level HTTPS pages are checked.";
  if (s && s.status === "checking") summary = `Asking the notaries about ${s.host}:${s.port}…`;
  else if (s && s.status === "error") {
    summary = `The helper gave no verdict: ${s.error}`;
    if (/native messaging host/i.test(s.error)) summary += " Install it with: parallax helper install --browser chromium";
  }
  else if (v) summary = v.summary;
  $("summary").textContent = summary;
  $("facts").classList.toggle("hidden", !v);
  $("notaries").classList.toggle("hidden", !v);
  const body = $("notaries").querySelector("tbody");
  body.replaceChildren();
  if (!v) return;
  $("target").textContent = `${v.host}:${v.port}`;
  const mine = v.client || {};
  $("you-saw").textContent = `${mine.pin || mine.status || "-"}${mine.ip ? ` at ${mine.ip}` : ""} (${mine.source === "supplied" ? "browser's chain" : "helper probe"})`;
  $("count").textContent = `${v.count} notaries agree, ${v.required} needed`;
  $("policy").textContent = v.policy;
  $("checked").textContent = `${new Date(v.checked_at * 1000).toLocaleTimeString()}${s.cached ? " (cached)" : ""}`;
  for (const r of v.results || []) {
    const tr = document.createElement("tr");
    const cells = [r.name, r.region || "-", (r.pins || []).map(shortPin).join(", ") || "-", r.result, r.age == null ? "-" : `${r.age}s`];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 2) td.className = "pin";
      if (i === 3) td.className = r.result === "agrees" || r.result === "disagrees" ? `result-${r.result}` : "result-other";
      if (i === 3 || i === 0) td.title = r.reason || "";
      tr.appendChild(td);
    });
    tr.dataset.result = r.result;
    body.appendChild(tr);
  }
  // SOCKS proxy vantages from the helper's "via" configuration: unsigned, labelled so.
  for (const x of v.vantages || []) {
    const tr = document.createElement("tr");
    const cells = [x.name, x.counted ? "proxy (unsigned)" : "proxy (unsigned, not counted)",
      (x.pins || []).map(shortPin).join(", ") || "-", x.result, "-"];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 2) td.className = "pin";
      if (i === 3) td.className = x.result === "agrees" || x.result === "disagrees" ? `result-${x.result}` : "result-other";
      if (i === 3 || i === 0) td.title = x.reason || "";
      tr.appendChild(td);
    });
    tr.dataset.result = x.result;
    tr.dataset.kind = "proxy";
    body.appendChild(tr);
  }
  if (v.interception) {
    const i = v.interception;
    $("summary").textContent += ` Declared interceptor: ${i.matched ? `matched ${shortPin(i.matched)}` : "not matched"}.`;
  }
}

async function main() {
  const id = await tabId();
  const key = `tab:${id}`;
  const load = async () => render((await api.storage.session.get(key))[key]);
  await load();
  document.body.dataset.ready = "1";
  api.storage.onChanged.addListener((changes, area) => {
    if (area === "session" && key in changes) render(changes[key].newValue);
  });
  $("recheck").addEventListener("click", async () => {
    $("note").textContent = "checking…";
    const r = await api.runtime.sendMessage({ type: "recheck", tabId: id });
    $("note").textContent = r && r.ok ? "" : (r && r.error) || "";
  });
  $("options").addEventListener("click", (e) => {
    e.preventDefault();
    api.runtime.openOptionsPage();
  });
}

main();
