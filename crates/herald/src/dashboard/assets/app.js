// herald's operator dashboard: plain JavaScript, no dependencies. Data comes from /dashboard/api/*, live updates
// from the server-sent event stream /dashboard/api/events (one "tick" a second).
"use strict";

// lastSeq: the newest outcome held in state.outcomes (its sequence number); a tick's outcomes at or below it are
// already there (the Outcomes page's list was read between two ticks).
const state = { session: null, csrf: null, events: null, overview: null, domains: [], outcomes: [], lastSeq: 0,
  sort: { key: "domain", dir: 1 }, filter: "", outcomeFilter: { domain: "", kind: "", token: "", reason: "" },
  domainTicks: 0 };
// The Domain page asks for its detail again every this many ticks, not every second: herald resolves the
// domain's options and reads its invalid tokens for each answer.
const DOMAIN_REFRESH_TICKS = 5;

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (n) => (n === null || n === undefined) ? "—" : Number(n).toLocaleString("en-US");
const bytes = (n) => n > 1e9 ? (n / 1e9).toFixed(1) + " GB" : n > 1e6 ? (n / 1e6).toFixed(1) + " MB" : n > 1e3 ? (n / 1e3).toFixed(1) + " kB" : n + " B";
const age = (secs) => secs < 90 ? secs + " s" : secs < 5400 ? Math.round(secs / 60) + " min" : secs < 172800 ? (secs / 3600).toFixed(1) + " h" : (secs / 86400).toFixed(1) + " d";
// Unix seconds as "YYYY-MM-DD HH:MM:SS" (UTC); a time no such date can show (an APNs timestamp far out of range)
// as the number itself, `raw` if given.
const when = (t, raw = t) => {
  if (!t) return "—";
  const d = new Date(t * 1000);
  const y = d.getUTCFullYear();
  return Number.isNaN(y) || y < 0 || y > 9999 ? esc(raw) : d.toISOString().replace("T", " ").slice(0, 19);
};

async function api(path, opts = {}) {
  const headers = Object.assign({ "accept": "application/json" }, opts.headers || {});
  if (opts.method === "POST") {
    headers["content-type"] = "application/json";
    if (state.csrf) headers["x-csrf-token"] = state.csrf;
  }
  const r = await fetch("/dashboard/api/" + path, Object.assign({ credentials: "same-origin" }, opts, { headers }));
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (r.status === 401) { showLogin(body && body.error); throw new Error("unauthenticated"); }
  if (!r.ok) { const e = new Error((body && body.error) || ("HTTP " + r.status)); e.status = r.status; e.body = body; throw e; }
  return body;
}

function toast(text, bad) {
  const t = $("#toast");
  t.textContent = text; t.className = bad ? "bad" : ""; t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}

function showLogin(message) {
  stopEvents();
  state.session = null; state.csrf = null;
  $("#nav").hidden = true; $("#logout").hidden = true; $("#who").textContent = "";
  $("#page").innerHTML = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message && message !== "log in with an API key of this listener" ? message : (message ? "Log in with an API key of this listener." : "");
}

async function start() {
  try {
    const s = await api("session");
    loggedIn(s);
  } catch (e) { if (e.message !== "unauthenticated") toast(e.message, true); }
}

function loggedIn(s) {
  state.session = s; state.csrf = s.csrf || null;
  $("#login").hidden = true; $("#nav").hidden = false;
  $("#logout").hidden = s.via !== "session";
  $("#who").textContent = (s.admin ? "admin" : "read-only") + " · " + s.via;
  startEvents();
  route();
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = $("#key").value;
  try {
    const r = await fetch("/dashboard/api/login", { method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json" }, body: JSON.stringify({ key }) });
    if (!r.ok) {
      // 401: a wrong key; anything else (429 during a lockout, with its wait) in the server's words.
      let body = null;
      try { body = await r.json(); } catch (_) { body = null; }
      $("#login-error").textContent = r.status === 401 ? "That key is not accepted here."
        : (body && body.error) || ("HTTP " + r.status);
      return;
    }
    $("#key").value = "";
    const s = await api("session");
    loggedIn(s);
  } catch (e) { $("#login-error").textContent = e.message; }
});

$("#logout").addEventListener("click", async () => {
  try { await fetch("/dashboard/api/logout", { method: "POST", credentials: "same-origin" }); } catch (_) { /* ignore */ }
  showLogin("");
});

function startEvents() {
  stopEvents();
  const es = new EventSource("/dashboard/api/events");
  es.addEventListener("tick", (ev) => {
    let t; try { t = JSON.parse(ev.data); } catch (_) { return; }
    onTick(t);
  });
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) { state.events = null; setTimeout(() => state.session && start(), 2000); } };
  // Connected again (herald restarted, or the listener did): outcomes may be numbered afresh, so those held go, and
  // the Outcomes page reads its list again.
  let opened = false;
  es.addEventListener("open", () => {
    if (opened) {
      state.outcomes = []; state.lastSeq = 0;
      if (currentPage().name === "outcomes") route();
    }
    opened = true;
  });
  state.events = es;
}
function stopEvents() { if (state.events) { state.events.close(); state.events = null; } }

function onTick(t) {
  if (state.overview) {
    Object.assign(state.overview, t.overview);
    state.overview.history.push(t.sample);
    if (state.overview.history.length > 900) state.overview.history.shift();
  }
  state.domains = t.domains;
  for (const o of t.outcomes) {
    if (o.seq <= state.lastSeq) continue;
    state.outcomes.push(o);
    state.lastSeq = o.seq;
  }
  if (state.outcomes.length > 500) state.outcomes.splice(0, state.outcomes.length - 500);
  const page = currentPage();
  if (page.name === "overview" && state.overview) renderOverview();
  else if (page.name === "domains") renderDomains();
  else if (page.name === "outcomes") renderOutcomes();
  else if (page.name === "domain" && ++state.domainTicks % DOMAIN_REFRESH_TICKS === 0) refreshDomain(page.arg, true);
}

// The page the link names. A malformed link (such as #/domain/%E0, which is no percent-encoded text) names the
// "bad-link" page, which says so, instead of throwing at every tick.
function currentPage() {
  const h = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = h.split("/");
  let arg = null;
  try { arg = rest.length ? decodeURIComponent(rest.join("/")) : null; } catch (_) { return { name: "bad-link", arg: null }; }
  return { name: name || "overview", arg };
}

async function route() {
  if (!state.session) return;
  const p = currentPage();
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === p.name || (p.name === "domain" && a.dataset.page === "domains")));
  const page = $("#page");
  page.innerHTML = "<p>Loading…</p>";
  try {
    if (p.name === "overview") { state.overview = await api("overview"); renderOverview(); }
    else if (p.name === "domains") { state.domains = (await api("domains")).domains; renderDomains(); }
    else if (p.name === "domain") { await refreshDomain(p.arg, false); }
    else if (p.name === "outcomes") {
      const r = await api("outcomes?limit=500");
      state.outcomes = r.outcomes; state.lastSeq = r.last_seq;
      renderOutcomes();
    }
    else if (p.name === "config") { await renderConfig(); }
    else if (p.name === "bad-link") { page.innerHTML = "<p class='error' id='bad-link'>This link is malformed. <a href='#/overview'>Overview</a></p>"; }
    else { page.innerHTML = "<p>No such page.</p>"; }
  } catch (e) { if (e.message !== "unauthenticated") page.innerHTML = "<p class='error'>" + esc(e.message) + "</p>"; }
}
window.addEventListener("hashchange", route);

function chart(title, values, cls) {
  const w = 300, h = 80, peak = values.reduce((a, b) => Math.max(a, b), 0), max = Math.max(1, peak);
  const n = Math.max(values.length - 1, 1);
  const pts = values.map((v, i) => (i * w / n).toFixed(1) + "," + (h - v * (h - 4) / max).toFixed(1)).join(" ");
  const last = values.length ? values[values.length - 1] : 0;
  return `<div class="card chart ${cls}"><div class="label">${esc(title)} — now ${fmt(last)}/s, peak ${fmt(peak)}/s</div>
    <svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" role="img" aria-label="${esc(title)}"><polyline points="${pts}"/></svg></div>`;
}

function card(label, value, id, cls) {
  return `<div class="card"><div class="label">${esc(label)}</div><div class="value ${cls || ""}" ${id ? `id="${id}"` : ""}>${value}</div></div>`;
}

function renderOverview() {
  const o = state.overview;
  if (currentPage().name !== "overview") return;
  const hist = o.history || [];
  const series = (k) => hist.map((s) => s[k]);
  const warnings = (o.warnings || []).map((w) => `<li class="${w.severity === "error" ? "bad" : "warn"}">${w.binding ? `binding ${esc(w.binding)} ` : ""}${esc(w.domain)}: ${esc(w.severity)}: ${esc(w.message)}</li>`).join("");
  $("#page").innerHTML = `<h1>Overview</h1>
    ${o.held ? "<p class='warn'>Delivery is held (apn { enabled = false }).</p>" : ""}
    <div class="cards">
      ${card("Accepted", fmt(o.totals.accepted), "accepted")}
      ${card("Delivered", fmt(o.totals.delivered), "delivered", "ok")}
      ${card("Transient failures", fmt(o.totals.transient), "transient", "warn")}
      ${card("Permanent failures", fmt(o.totals.permanent), "permanent", "bad")}
      ${card("Queued active", fmt(o.queued.active), "queued-active")}
      ${card("Queued delayed", fmt(o.queued.delayed), "queued-delayed")}
      ${card("In flight", fmt(o.in_flight), "in-flight")}
      ${card("APNs connections", fmt(o.connections), "connections")}
      ${card("Oldest queued", o.oldest_queued ? age(o.oldest_queued.age_secs) : "none", "oldest-queued")}
      ${card("Spool (" + esc(o.spool_backend || "embedded") + ")", fmt(o.spool.records) + " · " + bytes(o.spool.bytes), "spool")}
    </div>
    ${o.jetstream ? jetstreamSection(o.jetstream) : ""}
    <div class="charts">
      ${chart("Accepted per second", series("accepted"), "")}
      ${chart("Delivered per second", series("delivered"), "ok")}
      ${chart("Transient failures per second", series("transient"), "warn")}
      ${chart("Permanent failures per second", series("permanent"), "bad")}
    </div>
    <h2>Credentials</h2>
    ${warnings ? `<ul id="warnings">${warnings}</ul>` : "<p id='warnings' class='ok'>No certificate or token-key warnings.</p>"}`;
}

// The JetStream spool: the stream's depth, the NATS servers holding it and the herald nodes sharing it.
function jetstreamSection(j) {
  const servers = (j.servers || []).map((s) => `<tr><td>${esc(s.server)}</td><td>${s.leader ? "leader" : "replica"}</td>
    <td class="${s.offline ? "bad" : s.current ? "ok" : "warn"}">${s.offline ? "offline" : s.current ? "current" : "behind"}</td>
    <td class="num">${fmt(s.lag)}</td></tr>`).join("");
  const nodes = (j.nodes || []).map((n) => `<tr><td>${esc(n.node)}${n.this_node ? " <span class='pill'>this node</span>" : ""}</td>
    <td class="num">${fmt(n.held)}</td><td class="num">${fmt(n.pulled)}</td><td class="num">${fmt(n.seen_secs_ago)} s ago</td></tr>`).join("");
  return `<h2>JetStream${j.cluster ? " · cluster " + esc(j.cluster) : ""}</h2>
    ${j.connected ? "" : "<p class='bad' id='js-disconnected'>Not connected to NATS: new notifications are refused until it is back.</p>"}
    <div class="cards">
      ${card("Stream messages", fmt(j.messages) + " · " + bytes(j.bytes), "js-messages")}
      ${card("Not yet pulled", fmt(j.pending), "js-pending")}
      ${card("Pulled, not acked", fmt(j.ack_pending), "js-ack-pending")}
      ${card("Redelivered", fmt(j.redelivered), "js-redelivered")}
      ${card("Held by this node", fmt(j.held_here), "js-held")}
    </div>
    <div class="grid2">
      <div><h2>herald nodes</h2><table id="js-nodes"><thead><tr><th>Node</th><th class="num">Held</th><th class="num">Pulled</th><th class="num">Heartbeat</th></tr></thead>
        <tbody>${nodes || "<tr><td colspan='4'>No heartbeat yet.</td></tr>"}</tbody></table></div>
      <div><h2>NATS servers of the stream</h2><table id="js-servers"><thead><tr><th>Server</th><th>Role</th><th>State</th><th class="num">Lag</th></tr></thead>
        <tbody>${servers || "<tr><td colspan='4'>One server, no cluster.</td></tr>"}</tbody></table></div>
    </div>`;
}

const COLUMNS = [
  ["domain", "Domain", ""], ["protocol", "Protocol", "hide-narrow"], ["route", "Route", "hide-narrow"],
  ["active", "Queued", "num"], ["in_flight", "In flight", "num hide-narrow"], ["connections", "Conns / limit", "num hide-narrow"],
  ["d1m", "Deliv. 1m", "num"], ["f1m", "Failed 1m", "num"], ["d1h", "Deliv. 1h", "num hide-narrow"], ["f1h", "Failed 1h", "num hide-narrow"],
  ["next_retry_secs", "Next retry", "num hide-narrow"], ["last_error", "Last error", ""],
];
function sortValue(r, k) {
  if (k === "d1m") return r.windows.delivered_1m; if (k === "f1m") return r.windows.failed_1m;
  if (k === "d1h") return r.windows.delivered_1h; if (k === "f1h") return r.windows.failed_1h;
  if (k === "active") return r.active + r.delayed;
  if (k === "last_error") return r.last_error ? r.last_error.reason : "";
  if (k === "next_retry_secs") return r.next_retry_secs ?? Infinity;
  return r[k] ?? "";
}

function renderDomains() {
  if (currentPage().name !== "domains") return;
  const f = state.filter.toLowerCase();
  const rows = state.domains.filter((r) => !f || r.domain.toLowerCase().includes(f) || (r.last_error && r.last_error.reason.toLowerCase().includes(f)));
  const { key, dir } = state.sort;
  rows.sort((a, b) => { const x = sortValue(a, key), y = sortValue(b, key); return (x > y ? 1 : x < y ? -1 : 0) * dir; });
  const focused = document.activeElement && document.activeElement.id === "domain-filter";
  $("#page").innerHTML = `<h1>Domains</h1>
    <div class="filters"><input id="domain-filter" placeholder="Filter by domain or error" value="${esc(state.filter)}"></div>
    <table id="domains"><thead><tr>${COLUMNS.map(([k, t, c]) => `<th class="${c}" data-key="${k}">${t}${key === k ? (dir > 0 ? " ▲" : " ▼") : ""}</th>`).join("")}</tr></thead>
    <tbody>${rows.map((r) => `<tr class="clickable" data-domain="${esc(r.domain)}">
      <td>${esc(r.domain)} ${r.paused ? "<span class='pill paused'>paused</span>" : ""}</td>
      <td class="hide-narrow">${esc(r.protocol || r.method)}</td><td class="hide-narrow">${esc(r.route || "—")}</td>
      <td class="num">${fmt(r.active)} / ${fmt(r.delayed)}</td><td class="num hide-narrow">${fmt(r.in_flight)}</td>
      <td class="num hide-narrow">${fmt(r.connections)} / ${fmt(r.connection_limit)}</td>
      <td class="num">${fmt(r.windows.delivered_1m)}</td><td class="num">${fmt(r.windows.failed_1m)}</td>
      <td class="num hide-narrow">${fmt(r.windows.delivered_1h)}</td><td class="num hide-narrow">${fmt(r.windows.failed_1h)}</td>
      <td class="num hide-narrow">${r.next_retry_secs == null ? "—" : "in " + fmt(r.next_retry_secs) + " s"}</td>
      <td>${r.last_error ? `<span class="bad">${esc(r.last_error.reason)}</span>${r.last_error.status ? " (" + r.last_error.status + ")" : ""}` : "—"}</td></tr>`).join("")}</tbody></table>
    <p class="label">Queued is active / delayed.</p>`;
  const input = $("#domain-filter");
  input.addEventListener("input", () => { state.filter = input.value; renderDomains(); });
  if (focused) { input.focus(); input.setSelectionRange(input.value.length, input.value.length); }
  document.querySelectorAll("#domains th").forEach((th) => th.addEventListener("click", () => {
    const k = th.dataset.key; state.sort = { key: k, dir: state.sort.key === k ? -state.sort.dir : 1 }; renderDomains();
  }));
  document.querySelectorAll("#domains tbody tr").forEach((tr) => tr.addEventListener("click", () => { location.hash = "#/domain/" + encodeURIComponent(tr.dataset.domain); }));
}

let domainBusy = false;
async function refreshDomain(name, live) {
  if (live && domainBusy) return;
  domainBusy = true;
  try {
    const d = await api("domains/" + encodeURIComponent(name));
    const p = currentPage();
    if (p.name !== "domain" || p.arg !== name) return;
    renderDomain(d, live);
  } catch (e) {
    if (!live && e.message !== "unauthenticated") $("#page").innerHTML = "<p class='error'>" + esc(e.message) + "</p>";
  } finally { domainBusy = false; }
}

function renderDomain(d, live) {
  const r = d.row;
  const admin = state.session && state.session.admin;
  const html = `<h1>Domain ${esc(r.domain)} ${r.paused ? "<span class='pill paused'>paused</span>" : ""}</h1>
    <div class="cards">
      ${card("Queued active", fmt(r.active), "d-active")}
      ${card("Queued delayed", fmt(r.delayed), "d-delayed")}
      ${card("In flight", fmt(r.in_flight))}
      ${card("Connections / limit", fmt(r.connections) + " / " + fmt(r.connection_limit))}
      ${card("Delivered", fmt(r.delivered), "d-delivered", "ok")}
      ${card("Failed", fmt(r.failed), "d-failed", "bad")}
      ${card("Next retry", d.next_retry_secs === null ? "—" : "in " + d.next_retry_secs + " s", "d-next")}
      ${card("Last error", r.last_error ? esc(r.last_error.reason) : "—", "d-last-error", "bad")}
    </div>
    <div class="actions">
      <button id="act-flush" ${admin ? "" : "title='needs an admin key'"}>Flush (retry delayed now)</button>
      <button id="act-pause">${r.paused ? "Resume" : "Pause"}</button>
      <button id="act-fail" class="danger">Fail the queue…</button>
    </div>
    <div class="grid2">
      <div><h2>Failures by reason</h2>
        <table id="failures"><thead><tr><th>Reason</th><th>Kind</th><th class="num">Count</th></tr></thead><tbody>
        ${d.failures.map((f) => `<tr><td>${esc(f.reason)}</td><td class="${f.kind === "permanent" ? "bad" : "warn"}">${esc(f.kind)}</td><td class="num">${fmt(f.count)}</td></tr>`).join("") || "<tr><td colspan=3>None</td></tr>"}</tbody></table>
        <h2>Recent invalid tokens</h2>
        <table id="invalid"><thead><tr><th>Token</th><th>Reason</th><th>When</th></tr></thead><tbody>
        ${d.invalid_tokens.map((t) => `<tr><td><code>${esc(t.token)}…</code></td><td>${esc(t.reason)}</td><td>${when(Math.floor(t.timestamp_ms / 1000), t.timestamp_ms)}</td></tr>`).join("") || "<tr><td colspan=3>None</td></tr>"}</tbody></table>
      </div>
      <div><h2>Effective options</h2>
        <table id="options"><thead><tr><th>Option</th><th>Value</th><th>From</th></tr></thead><tbody>
        ${d.options.map((o) => `<tr><td>${esc(o.name)}</td><td><code>${esc(o.value)}</code></td><td>${esc(o.scope)}</td></tr>`).join("")}</tbody></table>
      </div>
    </div>`;
  $("#page").innerHTML = html;
  $("#act-flush").addEventListener("click", () => act(r.domain, "flush"));
  $("#act-pause").addEventListener("click", () => act(r.domain, r.paused ? "resume" : "pause"));
  $("#act-fail").addEventListener("click", () => {
    if (confirm("Fail every queued notification of " + r.domain + "? They are removed and reported as failed.")) act(r.domain, "fail");
  });
}

async function act(domain, action) {
  try {
    const r = await api("domains/" + encodeURIComponent(domain) + "/" + action, { method: "POST", body: "{}" });
    toast(r.message);
  } catch (e) { if (e.message !== "unauthenticated") toast("Refused: " + e.message, true); }
  refreshDomain(domain, false);
}

function renderOutcomes() {
  if (currentPage().name !== "outcomes") return;
  const f = state.outcomeFilter;
  const match = (o) => (!f.domain || o.domain.toLowerCase().includes(f.domain.toLowerCase())) && (!f.kind || o.kind === f.kind)
    && (!f.token || o.token.startsWith(f.token.toLowerCase().slice(0, o.token.length))) && (!f.reason || o.reason.toLowerCase().includes(f.reason.toLowerCase()));
  const rows = state.outcomes.filter(match).slice(-200).reverse();
  const focused = document.activeElement && document.activeElement.dataset && document.activeElement.dataset.f;
  $("#page").innerHTML = `<h1>Outcomes</h1>
    <div class="filters">
      <input data-f="domain" placeholder="Domain" value="${esc(f.domain)}">
      <select data-f="kind"><option value="">Any kind</option>${["delivered", "transient", "permanent"].map((k) => `<option ${f.kind === k ? "selected" : ""}>${k}</option>`).join("")}</select>
      <input data-f="token" placeholder="Token prefix" value="${esc(f.token)}">
      <input data-f="reason" placeholder="APNs reason" value="${esc(f.reason)}">
    </div>
    <table id="outcomes"><thead><tr><th>When</th><th>Kind</th><th>Domain</th><th>Token</th><th class="hide-narrow">Status</th><th>Reason</th></tr></thead>
    <tbody>${rows.map((o) => `<tr><td>${when(o.at)}</td><td class="${o.kind === "delivered" ? "ok" : o.kind === "transient" ? "warn" : "bad"}">${o.kind}</td>
      <td>${esc(o.domain)}</td><td><code>${esc(o.token)}…</code></td><td class="hide-narrow">${o.status ?? ""}</td><td>${esc(o.reason)}</td></tr>`).join("") || "<tr><td colspan=6>No outcomes yet.</td></tr>"}</tbody></table>`;
  document.querySelectorAll(".filters [data-f]").forEach((el) => {
    el.addEventListener(el.tagName === "SELECT" ? "change" : "input", () => { f[el.dataset.f] = el.value; renderOutcomes(); });
    if (focused === el.dataset.f) { el.focus(); if (el.setSelectionRange) el.setSelectionRange(el.value.length, el.value.length); }
  });
}

function tree(node) {
  if (!node) return "";
  return `<li>${esc(node.path)}${node.exists ? "" : " <span class='bad'>(missing)</span>"}${node.cycle ? " <span class='warn'>(cycle)</span>" : ""}
    ${node.children && node.children.length ? `<ul class="tree">${node.children.map(tree).join("")}</ul>` : ""}</li>`;
}

async function renderConfig() {
  const c = await api("config");
  const disk = c.disk;
  $("#page").innerHTML = `<h1>Configuration</h1>
    <p>${esc(c.path)} · generation ${fmt(c.generation)}</p>
    <div class="actions"><button id="reload">Reload the configuration</button></div>
    <div id="reload-result"></div>
    <h2>The file on disk</h2>
    ${disk.ok ? "<p id='disk-status' class='ok'>Valid: a reload would put it in force.</p>" : `<p id='disk-status' class='bad'>Not valid: a reload would be refused.</p><pre id="disk-errors">${esc(disk.errors.join("\n"))}</pre>`}
    ${disk.warnings && disk.warnings.length ? `<pre class="warn">${esc(disk.warnings.join("\n"))}</pre>` : ""}
    <h2>Include tree</h2><ul class="tree" id="includes">${tree(c.includes)}</ul>
    <h2>Running configuration (secrets masked)</h2><pre id="running">${esc(c.running)}</pre>`;
  $("#reload").addEventListener("click", async () => {
    try {
      const r = await api("config/reload", { method: "POST", body: "{}" });
      const failed = r.listener_errors || [], warnings = r.warnings || [], unroutable = r.unroutable || [];
      try { await renderConfig(); } catch (_) { /* the page as it was; the reload's result goes below */ }
      // In force, but a listener could not take its new settings (it runs with its previous ones, or is down):
      // a failure to act on. Warnings and domains the configuration cannot deliver are listed.
      const parts = [];
      if (failed.length) parts.push(`<p class="bad">Generation ${fmt(r.generation)} is in force, but listeners failed:</p><pre class="bad" id="reload-listener-errors">${esc(failed.join("\n"))}</pre>`);
      if (unroutable.length) parts.push(`<p class="warn">Domains this configuration cannot deliver:</p><pre class="warn" id="reload-unroutable">${esc(unroutable.map((u) => Array.isArray(u) ? u[0] + ": " + u[1] : String(u)).join("\n"))}</pre>`);
      if (warnings.length) parts.push(`<p class="warn">Warnings:</p><pre class="warn" id="reload-warnings">${esc(warnings.join("\n"))}</pre>`);
      const out = $("#reload-result");
      if (out) out.innerHTML = parts.join("");
      if (failed.length) toast("Reloaded (generation " + r.generation + "), but " + failed.length + (failed.length === 1 ? " listener" : " listeners") + " failed", true);
      else toast("Reloaded: generation " + r.generation + (warnings.length || unroutable.length ? ", with warnings" : ""));
    } catch (e) {
      if (e.message === "unauthenticated") return;
      const text = (e.body && e.body.error) || e.message;
      $("#reload-result").innerHTML = `<pre class="bad" id="reload-error">${esc(text)}</pre>`;
      toast("Reload refused", true);
    }
  });
}

start();
