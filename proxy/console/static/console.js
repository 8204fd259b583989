// Modelway console: plain DOM code, no dependencies. Every value from the server reaches the
// page as text (textContent, never parsed as HTML); charts are server-made SVG shown as <img> from
// blob: URLs. The key lives in this tab's sessionStorage and travels only as a Bearer header.
"use strict";

const STORE = "modelway.console.key";
const $ = (sel, root) => (root || document).querySelector(sel);
const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
const state = { who: null, tab: "overview", requestsOffset: 0, chartUrls: [] };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

const usd = (v) => (v == null ? "–" : v >= 100 ? "$" + v.toFixed(2) : "$" + String(+Number(v).toFixed(6)));
const int = (v) => (v == null ? "–" : Number(v).toLocaleString("en-US"));
const ms = (v) => (v == null ? "–" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms");
const pct = (v) => (v == null ? "–" : (v * 100).toFixed(1) + "%");
const when = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "–");

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const opts = Object.assign({ method: "GET" }, options || {});
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(STORE) };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method: opts.method, headers, credentials: "omit", cache: "no-store",
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const message = data && data.error ? data.error.message : "HTTP " + resp.status;
    throw new ApiError(resp.status, message);
  }
  return data;
}

function fail(err) {
  if (err instanceof ApiError && err.status === 401) return signOut(err.message);
  $("#app-error").textContent = err.message || String(err);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ---- sign in / out ---------------------------------------------------------------------

async function signIn(key) {
  sessionStorage.setItem(STORE, key);
  try {
    const overview = await api("/v1/console/overview");
    state.who = overview.who;
  } catch (err) {
    sessionStorage.removeItem(STORE);
    $("#signin-error").textContent = err.message;
    return;
  }
  $("#signin-error").textContent = "";
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#signout").hidden = false;
  const manager = state.who.role === "management";
  $("#who").textContent = (manager ? "management key" : "key") + (state.who.label ? " · " + state.who.label : "");
  for (const node of $$("[data-management]")) node.hidden = !manager;
  show("overview");
}

function signOut(message) {
  sessionStorage.removeItem(STORE);
  for (const url of state.chartUrls) URL.revokeObjectURL(url);
  state.chartUrls = [];
  state.who = null;
  $("#app").hidden = true;
  $("#signout").hidden = true;
  $("#signin").hidden = false;
  $("#who").textContent = $("#version").textContent = "";
  $("#signin-error").textContent = typeof message === "string" ? message : "";
  $("#signin-key").value = "";
}

// ---- tabs ------------------------------------------------------------------------------

const LOADERS = { overview: loadOverview, usage: loadUsage, keys: loadKeys, routes: loadRoutes,
                  requests: () => loadRequests(false) };

function show(tab) {
  state.tab = tab;
  for (const b of $$("nav [data-tab]")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const s of $$(".tab")) s.hidden = s.id !== "tab-" + tab;
  $("#app-error").textContent = "";
  LOADERS[tab]().catch(fail);
}

async function loadOverview() {
  const o = await api("/v1/console/overview");
  $("#version").textContent = "config " + o.config_version;
  $("#config-version").textContent = o.config_version;
  const w = o.windows, cols = ["today", "7d", "30d"];
  const line = (name, id, f, pick) => el("tr", { "data-row": id }, el("th", {}, name),
    ...cols.map((c) => el("td", { "data-window": c }, f(pick(w[c])))));
  fill($("#overview-table tbody"), [
    line("Requests", "requests", int, (x) => x.requests),
    line("Errors", "errors", int, (x) => x.errors),
    line("Spend", "cost", usd, (x) => x.cost),
    line("Cache hit ratio", "cache", pct, (x) => x.cache_hit_ratio),
  ]);
  $("#p50").textContent = ms(o.latency.p50_ms);
  $("#p99").textContent = ms(o.latency.p99_ms);
}

async function loadUsage() {
  const metric = $("#usage-metric").value, since = $("#usage-since").value;
  for (const url of state.chartUrls) URL.revokeObjectURL(url);
  state.chartUrls = [];
  const format = metric === "cost" ? usd : int;
  await Promise.all($$("figure.chart").map(async (fig) => {
    const by = fig.dataset.by;
    const chart = await api("/v1/console/charts?" + new URLSearchParams({ by, metric, since }));
    const url = URL.createObjectURL(new Blob([chart.svg], { type: "image/svg+xml" }));
    state.chartUrls.push(url);
    $("img", fig).src = url;
    const label = (r) => (by === "day" ? r.day : by === "model" ? r.model : r.key_label || r.key_id || "(no key)");
    fill($("table", fig), [
      el("tr", {}, el("th", {}, by), el("th", {}, metric.replace("_", " "))),
      ...chart.data.map((r) => el("tr", { "data-label": label(r) }, el("td", {}, label(r)),
        el("td", { "data-value": r[metric] }, format(r[metric])))),
    ]);
  }));
}

// ---- keys ------------------------------------------------------------------------------

const numberOrNull = (v) => (v === "" ? null : Number(v));

async function loadKeys() {
  const [keys, spend] = await Promise.all([
    api("/v1/account/keys"), api("/v1/account/analytics?group_by=key&since=30d")]);
  const month = Object.fromEntries(spend.data.map((r) => [r.key_id, r.cost]));
  fill($("#keys-table tbody"), keys.data.map((k) => keyRow(k, month[k.id] || 0)));
}

function keyRow(k, spent30) {
  const state_ = k.disabled ? "disabled" : k.expires_at && k.expires_at * 1000 < Date.now() ? "expired" : "active";
  const act = (label, fn, cls) => el("button", { type: "button", class: cls || "secondary", onclick: () => fn().catch(fail) }, label);
  const row = el("tr", { "data-key-id": k.id },
    el("td", {}, k.label), el("td", {}, el("code", {}, k.id)), el("td", {}, el("code", {}, k.prefix || "")),
    el("td", {}, (k.allowed_models || []).join(", ") || "all"),
    el("td", {}, usd(k.usage_today)), el("td", {}, usd(spent30)),
    el("td", {}, k.minute_limit == null ? "–" : int(k.minute_limit)),
    el("td", {}, k.daily_limit == null ? "–" : usd(k.daily_limit)),
    el("td", {}, k.balance == null ? "–" : usd(k.balance)),
    el("td", {}, when(k.last_used_at)), el("td", { class: "state-" + state_ }, state_),
    el("td", { class: "actions" },
      act("Edit", async () => row.replaceWith(editRow(k))),
      act(k.disabled ? "Enable" : "Disable", async () => {
        await api("/v1/account/keys/" + encodeURIComponent(k.id), { method: "PATCH", body: { disabled: !k.disabled } });
        await loadKeys();
      }),
      act("Revoke", async () => {
        if (!window.confirm("Revoke key " + k.label + "? Clients using it are refused at once.")) return;
        await api("/v1/account/keys/" + encodeURIComponent(k.id), { method: "DELETE" });
        await loadKeys();
      }, "danger")));
  return row;
}

function editRow(k) {
  const input = (name, value, attrs) => el("input", Object.assign({ name, value: value == null ? "" : value,
    type: "number", min: "0", step: "any", "aria-label": name }, attrs || {}));
  const fields = {
    minute_limit: input("minute_limit", k.minute_limit, { min: "1", step: "1" }),
    daily_limit: input("daily_limit", k.daily_limit), balance: input("balance", k.balance),
  };
  const save = async () => {
    const body = {};
    for (const [name, node] of Object.entries(fields)) body[name] = numberOrNull(node.value);
    await api("/v1/account/keys/" + encodeURIComponent(k.id), { method: "PATCH", body });
    await loadKeys();
  };
  return el("tr", { "data-key-id": k.id, class: "editing" },
    el("td", {}, k.label), el("td", { colspan: "5" }, el("code", {}, k.id)),
    el("td", {}, fields.minute_limit), el("td", {}, fields.daily_limit), el("td", {}, fields.balance),
    el("td", { colspan: "3", class: "actions" },
      el("button", { type: "button", onclick: () => save().catch(fail) }, "Save"),
      el("button", { type: "button", class: "secondary", onclick: () => loadKeys().catch(fail) }, "Cancel")));
}

async function createKey(form) {
  const data = new FormData(form), body = { label: data.get("label") };
  const models = String(data.get("allowed_models") || "").split(",").map((s) => s.trim()).filter(Boolean);
  if (models.length) body.allowed_models = models;
  for (const name of ["minute_limit", "daily_limit", "balance"]) {
    if (data.get(name) !== "") body[name] = Number(data.get(name));
  }
  const created = await api("/v1/account/keys", { method: "POST", body });
  form.reset();
  $("#key-secret-value").textContent = created.key;
  $("#key-secret").hidden = false;
  await loadKeys();
}

// ---- routes and requests ---------------------------------------------------------------

async function loadRoutes() {
  const routes = await api("/v1/console/routes");
  fill($("#routes-table tbody"), routes.data.map((r) => el("tr", { "data-model": r.model },
    el("td", {}, r.target === 0 ? r.model : ""), el("td", {}, r.strategy), el("td", {}, r.provider),
    el("td", {}, r.type), el("td", {}, r.upstream_model), el("td", {}, r.input_per_1m), el("td", {}, r.output_per_1m),
    el("td", {}, r.context_length == null ? "–" : int(r.context_length)),
    el("td", { class: r.cooling ? "state-disabled" : "" },
      r.status + (r.cooling && !/cooling/.test(r.status) ? "; cooling down" : "")))));
  fill($("#cooldowns-table tbody"), routes.cooldowns.length
    ? routes.cooldowns.map((c) => el("tr", {}, el("td", {}, c.provider), el("td", {}, c.upstream_model),
      el("td", {}, c.seconds_left)))
    : [el("tr", {}, el("td", { colspan: "3", class: "muted" }, "No target is cooling down."))]);
}

async function loadRequests(more) {
  const limit = 50;
  state.requestsOffset = more ? state.requestsOffset + limit : 0;
  const params = new URLSearchParams({ limit, offset: state.requestsOffset });
  for (const [name, value] of new FormData($("#requests-filter"))) if (value) params.set(name, value);
  if (state.who.role !== "management") params.delete("key_id");
  const page = await api("/v1/account/activity?" + params);
  const rows = page.data.map((r) => el("tr", { "data-request-id": r.request_id || "" },
    el("td", {}, when(r.created_at)), el("td", {}, r.key_label || r.key_id || "–"), el("td", {}, r.model || "–"),
    el("td", {}, r.provider || "–"), el("td", {}, r.endpoint || "–"),
    el("td", { class: r.status >= 400 || r.error_type ? "state-disabled" : "" },
      (r.status == null ? "–" : r.status) + (r.error_type ? " " + r.error_type : "")),
    el("td", {}, int(r.prompt_tokens) + " / " + int(r.completion_tokens)), el("td", {}, usd(r.cost)),
    el("td", {}, ms(r.latency_ms)), el("td", {}, r.cache_hit ? "hit" : ""), el("td", {}, el("code", {}, r.request_id || ""))));
  const tbody = $("#requests-table tbody");
  if (more) tbody.append(...rows); else fill(tbody, rows);
  $("#requests-more").hidden = !page.has_more;
}

// ---- wiring ----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("#signin-key").value.trim()); });
  $("#signout").addEventListener("click", () => signOut());
  for (const b of $$("nav [data-tab]")) b.addEventListener("click", () => show(b.dataset.tab));
  $("#refresh").addEventListener("click", () => show(state.tab));
  $("#usage-metric").addEventListener("change", () => loadUsage().catch(fail));
  $("#usage-since").addEventListener("change", () => loadUsage().catch(fail));
  $("#key-create").addEventListener("submit", (e) => { e.preventDefault(); createKey(e.target).catch(fail); });
  $("#key-secret-hide").addEventListener("click", () => {
    $("#key-secret").hidden = true; $("#key-secret-value").textContent = "";
  });
  $("#requests-filter").addEventListener("submit", (e) => { e.preventDefault(); loadRequests(false).catch(fail); });
  $("#requests-more").addEventListener("click", () => loadRequests(true).catch(fail));
  const saved = sessionStorage.getItem(STORE);
  if (saved) signIn(saved);
});
