// The dashboard's training jobs: one card per job (counts, per-source lines, decode share,
// validation top-1), the per-rank loading bars and the throughput line. Loaded before app.js,
// whose helpers (el, svg, api, fmt*) and state these functions use when called.
"use strict";

// ---- jobs -------------------------------------------------------------------------------

async function loadJobs() {
  const doc = await api("/api/jobs");
  const box = $("#jobs");
  $("#jobs-empty").hidden = doc.jobs.length > 0;
  const cards = await Promise.all(doc.jobs.map(async (job) => {
    const detail = await api(`/api/jobs/${encodeURIComponent(job.job)}?window_s=300&bucket_s=2`);
    return renderJob(detail);
  }));
  box.replaceChildren(...cards);
}

function renderJob(job) {
  const dup = job.duplicates === null ? "–" : fmtInt(job.duplicates);
  const miss = job.missing === null ? "–" : fmtInt(job.missing);
  // Duplicates and missing are over the union of all ranks' ids (scope "merged"); without id
  // bitmaps from several ranks they cannot be known, and the dashboard says so.
  const scope = (job.tracker || {}).scope || "";
  const why = { merged: "over the ids of all ranks", rank: "the one reporting rank's counts",
    unmerged: "unknown: several ranks sent no id bitmaps (StatsReporter num_samples=...)" }[scope] || "";
  const card = el("div", { class: "job", "data-job": job.job },
    el("h3", {}, job.job),
    el("p", { class: "meta" },
      el("span", { "data-field": "samples_per_s" }, fmt1(job.samples_per_s)), " samples/s · ",
      el("span", { "data-field": "samples" }, fmtInt(job.samples)), " samples · ",
      `${job.active_ranks}/${job.ranks.length} ranks active · epoch ${job.epoch ?? "–"} · `,
      el("span", { "data-field": "duplicates", "data-scope": scope, title: why }, dup), " duplicates · ",
      el("span", { "data-field": "missing", "data-scope": scope, title: why }, miss), " missing · ",
      `blocked ${fmt1(job.blocked_s)} s`,
      job.resumed_at_step == null ? "" :
        el("span", { "data-field": "resumed_at_step" }, ` · resumed at step ${fmtInt(job.resumed_at_step)}`),
      decodeLine(job)));
  if (job.evals && job.evals.length) {
    card.append(el("p", { class: "meta", "data-field": "evals" }, "validation top-1 · ",
      job.evals.map((e) => `epoch ${e.epoch}: ${pct(e.top1)} of ${fmtInt(e.samples)}`).join(" · ")));
  }
  const sources = sourceLines(job.sources);
  if (sources) card.append(sources);
  const from = (job.first_at || 0) - (job.bucket_s || 0);
  card.append(lineChart((job.series || []).filter((p) => p.t >= from)));
  card.append(rankBars(job.loading));
  return card;
}

// Device decode: the share of rows decoded on the device and the CPU fallbacks by reason.
function decodeLine(job) {
  const rows = Object.entries(job.decode || {});
  const total = rows.reduce((sum, [, n]) => sum + n, 0);
  if (total === 0) return "";
  const off = rows.filter(([where, n]) => where !== "device" && n > 0)
    .map(([where, n]) => `${where} ${fmtInt(n)}`).join(", ");
  return el("span", { "data-field": "decode", "data-fallback": String(job.decode_fallback_fraction) },
    ` · decoded on device ${pct(1 - job.decode_fallback_fraction)}` + (off ? ` (CPU: ${off})` : ""));
}

// A mix: one short line per source. Duplicates and missing show only where the service has
// them (scope "merged" or one reporting rank); with several unmerged ranks, delivered only.
function sourceLines(sources) {
  const rows = Object.entries((sources || {}).counts || {});
  if (rows.length === 0) return null;
  const known = (v) => (v === undefined ? "–" : fmtInt(v));
  return el("div", { class: "meta sources", "data-field": "sources", "data-scope": sources.scope },
    ...rows.map(([name, c]) => el("div", { "data-source": name },
      `${name}: ${fmtInt(c.delivered)}` + (c.quota === undefined ? "" : ` of ${fmtInt(c.quota)}`) +
      ` delivered · ${known(c.duplicates)} duplicates · ${known(c.missing)} missing`)));
}

const MAX_RANK_BARS = 64;

function pct(v) { return Number.isFinite(v) ? `${(100 * v).toFixed(1)}%` : "–"; }
function ms(v) { return Number.isFinite(v) ? `${(1000 * v).toFixed(1)} ms` : "–"; }

// Ranks side by side: each bar is a rank's share of time blocked on data (exposed loading);
// the slowest rank's bar is marked. Past MAX_RANK_BARS ranks, the slowest ones are drawn.
function rankBars(loading) {
  const box = el("div", { class: "ranks", "data-ranks": "" });
  let rows = ((loading && loading.ranks) || []).filter((r) => Number.isFinite(r.exposed_fraction));
  if (!loading || loading.slowest_rank === null || rows.length === 0) {
    box.append(el("p", { class: "meta" }, "per-rank loading: waiting for reports…"));
    return box;
  }
  const s = loading.spread;
  const slow = rows.find((r) => r.slowest);
  box.append(el("p", { class: "meta" },
    "slowest rank ", el("strong", { "data-field": "slowest_rank" }, String(loading.slowest_rank)),
    `: blocked on data ${pct(s.max)} of the time (p99 wait ${ms(slow && slow.blocked_p99_s)}, `
    + `queue depth ${slow && slow.queue_depth !== null ? slow.queue_depth : "–"}); `
    + `ranks ${pct(s.min)} to ${pct(s.max)}, median ${pct(s.median)}`));
  const total = rows.length;
  if (total > MAX_RANK_BARS) {
    rows = [...rows].sort((a, b) => b.exposed_fraction - a.exposed_fraction)
      .slice(0, MAX_RANK_BARS).sort((a, b) => a.rank - b.rank);
  }
  const width = 760, height = 120, pad = 34, gap = 4;
  const bw = Math.max(Math.min((width - 2 * pad) / rows.length - gap, 48), 3);
  const maxV = Math.max(...rows.map((r) => r.exposed_fraction), 0.01);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "data-chart": "ranks" });
  rows.forEach((r, i) => {
    const h = ((height - pad) * r.exposed_fraction) / maxV;
    const x = pad + i * (bw + gap);
    const bar = svg("rect", {
      x: x.toFixed(1), y: (height - pad / 2 - h).toFixed(1), width: bw.toFixed(1), height: Math.max(h, 1).toFixed(1),
      class: r.slowest ? "rank-bar slow" : "rank-bar", "data-rank": r.rank,
      "data-value": r.exposed_fraction, "data-slowest": r.slowest ? "true" : "false",
    });
    bar.append(svg("title", {}, `rank ${r.rank}: blocked ${pct(r.exposed_fraction)}; wait p50 ${ms(r.blocked_p50_s)}, `
      + `p95 ${ms(r.blocked_p95_s)}, p99 ${ms(r.blocked_p99_s)}; queue depth ${r.queue_depth ?? "–"}`));
    chart.append(bar);
    if (rows.length <= 32) {
      chart.append(svg("text", { x: (x + bw / 2).toFixed(1), y: height - 2, "text-anchor": "middle", class: "label" }, String(r.rank)));
    }
  });
  chart.append(svg("text", { x: 2, y: 12, class: "label" }, `${pct(maxV)} blocked`));
  box.append(chart);
  if (total > rows.length) box.append(el("p", { class: "meta" }, `showing the ${rows.length} slowest of ${total} ranks`));
  return box;
}

function lineChart(points) {
  const width = 760, height = 140, pad = 34;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "data-chart": "job" });
  if (points.length < 2) {
    chart.append(svg("text", { x: pad, y: height / 2, class: "label" }, "waiting for reports…"));
    return chart;
  }
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const maxY = Math.max(...points.map((p) => p.samples_per_s), 1);
  const sx = (t) => pad + ((width - 2 * pad) * (t - t0)) / Math.max(t1 - t0, 1e-9);
  const sy = (v) => height - pad / 2 - ((height - pad) * v) / maxY;
  const d = points.map((p) => `${sx(p.t).toFixed(1)},${sy(p.samples_per_s).toFixed(1)}`).join(" ");
  chart.append(svg("line", { x1: pad, x2: width - pad, y1: sy(0), y2: sy(0), class: "axis" }));
  chart.append(svg("polyline", { points: d, class: "series" }));
  chart.append(svg("text", { x: 2, y: sy(maxY) + 4, class: "label" }, fmtInt(maxY)));
  chart.append(svg("text", { x: width - pad, y: height - 2, "text-anchor": "end", class: "label" },
    `last ${Math.round(t1 - t0)} s, samples/s across ranks`));
  return chart;
}
