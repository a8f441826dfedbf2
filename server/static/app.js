// shardfeed dashboard: plain DOM + inline SVG, no libraries, no network beyond this origin.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
// The run statuses that are final come from the service (/api/info: finished_statuses).
const FINISHED = new Set();
const state = { runs: [], selected: null, info: null, jobTimer: null, runTimer: null };

function $(sel) { return document.querySelector(sel); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtInt(v) { return Number.isFinite(v) ? String(Math.round(v)) : "–"; }
function fmt1(v) { return Number.isFinite(v) ? v.toFixed(1) : "–"; }
function fmt2(v) { return Number.isFinite(v) ? v.toFixed(2) : "–"; }
function fmtTime(t) { return t ? new Date(t * 1000).toLocaleString() : "–"; }

async function api(path, options) {
  const res = await fetch(path, options);
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { detail: text }; }
  if (!res.ok) {
    const detail = body && body.detail;
    const msg = Array.isArray(detail)
      ? detail.map((d) => `${(d.loc || []).slice(1).join(".") || "body"}: ${d.msg}`).join("; ")
      : (detail || res.statusText);
    const err = new Error(`${res.status}: ${msg}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

function authHeaders() {
  const token = sessionStorage.getItem("shardfeed-token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// ---- runs -------------------------------------------------------------------------------

async function loadRuns() {
  const doc = await api("/api/benchmarks?limit=50");
  state.runs = doc.runs;
  renderRuns();
  if (!state.selected) {
    const fromHash = location.hash.startsWith("#run=") ? location.hash.slice(5) : null;
    const done = state.runs.find((r) => r.status === "done");
    const pick = fromHash || (done && done.id) || (state.runs[0] && state.runs[0].id);
    if (pick) selectRun(pick);
  }
}

function renderRuns() {
  const body = $("#runs tbody");
  body.replaceChildren();
  $("#runs-empty").hidden = state.runs.length > 0;
  for (const run of state.runs) {
    const link = el("a", { href: `#run=${run.id}`, "data-run": run.id }, run.id);
    link.addEventListener("click", (ev) => { ev.preventDefault(); selectRun(run.id); });
    const cancel = FINISHED.has(run.status) ? "" : el("button", { type: "button", class: "small" }, "cancel");
    if (cancel) cancel.addEventListener("click", () => cancelRun(run.id));
    const row = el("tr", { "data-run": run.id, class: run.id === state.selected ? "selected" : null },
      el("td", {}, link),
      el("td", {}, el("span", { class: `status ${run.status}` }, run.status)),
      el("td", {}, el("progress", { max: "1", value: String(run.progress), "data-run-progress": run.id })),
      el("td", {}, fmtTime(run.created_at)),
      el("td", {}, (run.config.modes || []).join(", ")),
      el("td", {}, cancel));
    body.append(row);
  }
}

async function selectRun(id) {
  state.selected = id;
  if (location.hash !== `#run=${id}`) history.replaceState(null, "", `#run=${id}`);
  for (const row of document.querySelectorAll("#runs tbody tr")) {
    row.classList.toggle("selected", row.dataset.run === id);
  }
  await loadRun(id);
}

async function loadRun(id) {
  let run;
  try { run = await api(`/api/benchmarks/${id}`); } catch (e) { return; }
  if (state.selected !== id) return;
  renderRun(run);
}

function renderRun(run) {
  const section = $("#run-detail");
  section.hidden = false;
  section.dataset.run = run.id;
  section.dataset.status = run.status;
  $("#run-id").textContent = run.id;
  const status = $("#run-status");
  status.textContent = run.status;
  status.className = `status ${run.status}`;
  const c = run.config;
  $("#run-meta").textContent =
    `${c.workers} workers · batch ${c.batch_size} · ${c.epochs} epoch(s) · image ${c.image_size}px` +
    ` · latency ${c.latency_ms} ms · ${c.decode ? "decode" : "no decode"} · repeat ${c.repeat}` +
    ` · shards ${c.shards}` + (run.finished_at ? ` · finished ${fmtTime(run.finished_at)}` : "");
  $("#run-progress").value = run.progress;
  const err = $("#run-error");
  err.hidden = !run.error;
  err.textContent = run.error || "";
  const cancel = $("#run-cancel");
  cancel.hidden = FINISHED.has(run.status);
  cancel.onclick = () => cancelRun(run.id);
  const result = run.result;
  drawChart(result);
  renderModes(result);
  section.dataset.rendered = result ? "result" : "pending";
}

function verdict(m) {
  if (m.status && m.status !== "ok") return { text: m.status, cls: "na", title: m.reason || "" };
  const parts = [];
  if (m.duplicates > 0) parts.push(`${m.duplicates} duplicates`);
  if (m.missing > 0) parts.push(`${m.missing} missing`);
  if (parts.length === 0) {
    return { text: m.padded > 0 ? `exactly once (+${m.padded} padded)` : "exactly once", cls: "ok" };
  }
  return { text: parts.join(", "), cls: "bad" };
}

// A ratio the bench marked noisy (loader.bench.noise) is shown as such, with the spread of the
// limit runs it was taken against, never as a result.
function noiseText(m) {
  return Number.isFinite(m.limit_spread) ? `noisy ±${Math.round(100 * m.limit_spread)}%` : "noisy";
}

function renderModes(result) {
  const body = $("#modes-table tbody");
  body.replaceChildren();
  if (!result) {
    body.append(el("tr", {}, el("td", { colspan: "10", class: "meta" }, "no result yet")));
    return;
  }
  for (const [mode, m] of Object.entries(result.modes || {})) {
    const v = verdict(m);
    const ok = !m.status || m.status === "ok";
    const cell = (field, text) => el("td", { "data-field": field, class: "num" }, ok ? text : "–");
    const ratio = cell("ratio_to_limit", fmt2(m.ratio_to_limit));
    if (ok && m.noisy) {
      ratio.append(" ", el("span", { class: "noisy", "data-field": "noisy", title: m.noise || "" },
        noiseText(m)));
    }
    body.append(el("tr", { "data-mode": mode, "data-status": m.status || "ok", "data-noisy": m.noisy ? "true" : "false" },
      el("th", { scope: "row" }, mode),
      cell("samples_per_s", fmt1(m.samples_per_s)),
      ratio,
      cell("limit_samples_per_s", fmt1(m.limit_samples_per_s)),
      cell("samples", fmtInt(m.samples)),
      cell("unique", fmtInt(m.unique)),
      cell("duplicates", fmtInt(m.duplicates)),
      cell("missing", fmtInt(m.missing)),
      cell("padded", fmtInt(m.padded)),
      el("td", { "data-field": "verdict", class: `verdict ${v.cls}`, title: v.title || null }, v.text)));
  }
}

function drawChart(result) {
  const box = $("#chart");
  box.replaceChildren();
  if (!result) { box.append(el("p", { class: "meta" }, "waiting for the run to finish…")); return; }
  const modes = Object.entries(result.modes || {}).filter(([, m]) => !m.status || m.status === "ok");
  // Each mode is drawn against the limit its own ratio used (the limit runs just before and
  // after it), never one limit for all: on a busy machine those differ.
  const limitOf = (m) => (Number.isFinite(m.limit_samples_per_s) ? m.limit_samples_per_s : null);
  const top1 = (m) => Math.max(m.samples_per_s || 0, Number.isFinite(m.samples_per_s_max) ? m.samples_per_s_max : 0);
  const maxValue = Math.max(...modes.map(([, m]) => Math.max(top1(m), limitOf(m) || 0)), 1);
  const rowH = 30, left = 130, right = 250, width = 800, top = 20;
  const height = top + rowH * Math.max(modes.length, 1) + 24;
  const plot = width - left - right;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "data-chart": "modes" });
  chart.append(svg("title", {}, "samples per second per mode; dashed tick: the limit that mode's ratio was taken against"));
  modes.forEach(([mode, m], i) => {
    const y = top + i * rowH;
    const w = Math.max(1, (plot * (m.samples_per_s || 0)) / maxValue);
    const bad = (m.duplicates || 0) > 0 || (m.missing || 0) > 0;
    chart.append(svg("text", { x: left - 8, y: y + rowH / 2 + 4, "text-anchor": "end", class: "label" }, mode));
    chart.append(svg("rect", {
      x: left, y: y + 4, width: w.toFixed(1), height: rowH - 8, rx: 3,
      class: bad ? "bar bad" : "bar", "data-mode": mode, "data-value": m.samples_per_s,
    }));
    if (Number.isFinite(m.samples_per_s_min) && Number.isFinite(m.samples_per_s_max)
        && m.samples_per_s_max > m.samples_per_s_min) {
      const x1 = left + (plot * m.samples_per_s_min) / maxValue;
      const x2 = left + (plot * m.samples_per_s_max) / maxValue;
      const whisker = svg("line", { x1, x2, y1: y + rowH / 2, y2: y + rowH / 2, class: "whisker" });
      whisker.append(svg("title", {}, `rounds: ${fmt1(m.samples_per_s_min)} to ${fmt1(m.samples_per_s_max)}/s`));
      chart.append(whisker);
    }
    const limit = limitOf(m);
    if (limit) {
      const x = left + (plot * limit) / maxValue;
      const tick = svg("line", { x1: x, x2: x, y1: y + 1, y2: y + rowH - 1, class: "limit", "data-mode": mode, "data-limit": limit });
      tick.append(svg("title", {}, `${mode}: limit ${fmt1(limit)}/s (runs just before and after it)`));
      chart.append(tick);
    }
    const ratio = Number.isFinite(m.ratio_to_limit) ? ` · ${fmt2(m.ratio_to_limit)}× limit ${fmt1(limit)}/s` : "";
    const noisy = m.noisy ? ` · ${noiseText(m)}` : "";
    chart.append(svg("text", { x: left + w + 6, y: y + rowH / 2 + 4, class: m.noisy ? "value noisy" : "value", "data-mode": mode },
      `${fmt1(m.samples_per_s)}/s${ratio}${noisy}`));
    const end = Number.isFinite(m.samples_per_s_max) ? Math.max(w, (plot * m.samples_per_s_max) / maxValue) : w;
    chart.lastChild.setAttribute("x", String(left + end + 6));
  });
  if (modes.length === 0) chart.append(svg("text", { x: left, y: top + 18, class: "label" }, "no mode ran"));
  box.append(chart);
}

async function cancelRun(id) {
  try {
    await api(`/api/benchmarks/${id}`, { method: "DELETE", headers: authHeaders() });
  } catch (e) {
    alert(`could not cancel ${id}: ${e.message}`);
  }
  scheduleRuns();
}

// ---- form -------------------------------------------------------------------------------

function buildForm(info) {
  const field = $("#modes-field");
  const defaults = new Set(info.default_modes);
  for (const mode of info.modes) {
    const box = el("input", { type: "checkbox", name: "modes", value: mode });
    box.checked = defaults.has(mode);
    field.append(el("label", { class: "check" }, box, ` ${mode}`));
  }
  $("#token-field").hidden = !info.token_required;
  $("#roots").textContent = info.data_roots.length
    ? `Data roots (paths are read only under these): ${info.data_roots.join(", ")}`
    : "No data roots are configured: start the service with --data-root DIR.";
  $("#start-form").addEventListener("submit", submitForm);
}

async function submitForm(ev) {
  ev.preventDefault();
  const form = ev.target;
  const data = new FormData(form);
  const token = data.get("token");
  if (token) sessionStorage.setItem("shardfeed-token", token);
  const body = {
    shards: data.get("shards"),
    modes: data.getAll("modes"),
    decode: form.elements.decode.checked ? "opencv" : "none",
  };
  if (data.get("folder")) body.folder = data.get("folder");
  for (const name of ["workers", "batch_size", "epochs", "image_size", "repeat"]) body[name] = parseInt(data.get(name), 10);
  body.latency_ms = parseFloat(data.get("latency_ms"));
  const msg = $("#form-msg");
  msg.textContent = "starting…";
  try {
    const res = await api("/api/benchmarks", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
    msg.textContent = `queued run ${res.id}`;
    state.selected = null;
    await loadRuns();
    selectRun(res.id);
  } catch (e) {
    msg.textContent = e.message;
  }
}

// ---- live updates -----------------------------------------------------------------------

function scheduleRuns() {
  clearTimeout(state.runTimer);
  state.runTimer = setTimeout(async () => {
    await loadRuns().catch(() => {});
    if (state.selected) await loadRun(state.selected);
  }, 150);
}

function scheduleJobs() {
  if (state.jobTimer) return;
  state.jobTimer = setTimeout(async () => {
    state.jobTimer = null;
    await loadJobs().catch(() => {});
  }, 1000);
}

function connect() {
  const badge = $("#conn");
  const source = new EventSource("/api/events");
  source.onopen = () => { badge.textContent = "live"; badge.className = "badge live"; };
  source.onerror = () => { badge.textContent = "reconnecting…"; badge.className = "badge"; };
  source.addEventListener("benchmark", scheduleRuns);
  source.addEventListener("benchmark_event", (ev) => {
    const e = JSON.parse(ev.data);
    const bar = document.querySelector(`[data-run-progress="${e.run}"]`);
    if (bar && Number.isFinite(e.progress)) bar.value = e.progress;
    if (e.run === state.selected && Number.isFinite(e.progress)) $("#run-progress").value = e.progress;
  });
  source.addEventListener("job", scheduleJobs);
}

async function main() {
  try {
    state.info = await api("/api/info");
    for (const status of state.info.finished_statuses || []) FINISHED.add(status);
    buildForm(state.info);
  } catch (e) {
    $("#roots").textContent = `could not load service info: ${e.message}`;
  }
  await Promise.all([loadRuns().catch(() => {}), loadJobs().catch(() => {})]);
  connect();
  setInterval(() => { loadJobs().catch(() => {}); }, 10000);
  setInterval(() => { if (document.visibilityState === "visible") scheduleRuns(); }, 15000);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", main);
