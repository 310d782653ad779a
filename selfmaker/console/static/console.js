// The selfmaker web console: draws the page its path names from /console/api/… and refreshes it.
//
// Plain script, no build step. Every name, tag, hyperparameter or log line from the platform goes into the
// page as text (textContent via el()), never as markup. Charts are uPlot (vendored under static/vendor);
// a variant keeps its colour on every chart and table (its position in the endpoint's variants).
"use strict";

const REFRESH_MS = 1500;
const PALETTE = ["#1a73e8", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb", "#b06000", "#5f6368"];
const state = {
  charts: new Map(), // id → {plot, node, labels}
  used: new Set(), // chart ids drawn by the current render
  refreshes: 0,
  window: new URLSearchParams(location.search).get("window") || "10m",
  timer: null,
};
// what the browser tests read: the charts (uPlot instances) and how many refreshes were drawn
window.selfmakerConsole = state;

// ---- small DOM helpers ---------------------------------------------------------------------------------

/** An element with attributes and children; strings become text nodes (never parsed as markup). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value); // CSSOM: allowed by the page's CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const text = (value) => (value === null || value === undefined || value === "" ? "–" : String(value));
const pct = (share) => (share === null || share === undefined ? "–" : `${(share * 100).toFixed(1)} %`);
const when = (epoch) => (epoch ? new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–");
const badge = (status) => el("span", { class: `badge ${status || ""}` }, text(status));
const link = (href, label) => el("a", { href }, label);
const colour = (index) => PALETTE[index % PALETTE.length];

function duration(start, end) {
  if (!start) return "–";
  const seconds = Math.max(0, Math.round((end || Date.now() / 1000) - start));
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function table(headers, rows, numeric = []) {
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { class: numeric.includes(i) ? "num" : null }, h)))),
    el("tbody", {}, rows),
  );
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(Boolean).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// ---- charts ----------------------------------------------------------------------------------------------

/** A uPlot chart kept across refreshes under `id`: new data is set in place, new series rebuild it.
 * series: [{label, colour, values, dash}] over the x values `xs`. */
function chart(id, title, unit, xs, series, options = {}) {
  state.used.add(id);
  const points = series.reduce((n, s) => n + s.values.filter((v) => v !== null && v !== undefined).length, 0);
  let entry = state.charts.get(id);
  const labels = series.map((s) => s.label + "|" + s.colour).join(",");
  if (entry && entry.labels !== labels) {
    entry.plot && entry.plot.destroy();
    state.charts.delete(id);
    entry = null;
  }
  if (!entry) {
    const node = el("div", { class: "chart", dataset: { chart: id } });
    entry = { node, plot: null, labels, body: el("div") };
    node.append(el("div", { class: "title" }, `${title} (${unit})`), entry.body);
    state.charts.set(id, entry);
  }
  entry.node.dataset.points = String(points);
  entry.node.dataset.unit = unit;
  if (!xs.length || !points) {
    entry.make = null;
    if (entry.plot) {
      entry.plot.destroy();
      entry.plot = null;
    }
    entry.body.replaceChildren(el("div", { class: "empty" }, "no data in this window yet"));
    return entry.node;
  }
  const data = [xs, ...series.map((s) => s.values)];
  if (entry.plot) {
    entry.plot.setData(data);
    return entry.node;
  }
  entry.body.replaceChildren();
  // drawn once the page is in the document (drawPending), at the width its grid cell has
  entry.make = (width) => new uPlot(
    {
      width,
      height: 200,
      // a count axis (trials) gets whole-number ticks and half a step of room at both ends
      scales: {
        x: options.xUnit ? { time: false, range: (u, lo, hi) => [lo - 0.5, hi + 0.5] } : { time: true },
        // rates, latencies and counts start at 0; an all-zero series gets a small axis, not 0–100
        y: options.fromZero ? { range: (u, lo, hi) => [0, Math.max(hi * 1.1, 1)] } : {},
      },
      series: [
        { label: options.xUnit || "time" },
        ...series.map((s) => {
          const one = {
            label: s.label,
            stroke: s.colour,
            width: s.width || 1.5,
            spanGaps: false,
            points: { size: s.pointSize || 6, fill: s.colour },
            value: (u, v) => (v === null || v === undefined ? "–" : `${+v.toFixed(3)} ${unit}`),
          };
          // points where asked for, else uPlot's own choice (shown where the data is sparse: one request)
          const show = s.showPoints ?? options.points;
          if (show !== undefined) one.points.show = show;
          if (s.dash) one.dash = s.dash; // uPlot passes it to setLineDash: never undefined
          if (s.pointsOnly) one.paths = () => null;
          return one;
        }),
      ],
      axes: [
        options.xUnit
          ? { label: options.xUnit, labelSize: 18, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500] }
          : { label: "time (local)", labelSize: 18, values: timeTicks, space: 80, incrs: TIME_STEPS },
        { label: unit, labelSize: 18, size: 56 },
      ],
      legend: { live: true },
    },
    data,
    entry.body,
  );
  return entry.node;
}

/** Draw the charts made by the last render, now that their cells have a width. */
function drawPending() {
  for (const entry of state.charts.values()) {
    if (entry.make) {
      entry.plot = entry.make(Math.max(320, entry.body.clientWidth - 4));
      entry.make = null;
    }
  }
}

/** Time axis steps in seconds: never below one (the labels say seconds at most). */
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

/** Time axis labels: h:mm:ss within an hour, h:mm within two days, then month/day h:mm (local time). */
function timeTicks(u, splits) {
  const span = u.scales.x.max - u.scales.x.min;
  return splits.map((s) => {
    const d = new Date(s * 1000);
    const clock = d.toTimeString();
    if (span > 2 * 86400) return `${d.getMonth() + 1}/${d.getDate()} ${clock.slice(0, 5)}`;
    return span > 3600 ? clock.slice(0, 5) : clock.slice(0, 8);
  });
}

/** Destroy the charts the last render did not draw (a page left, a variant gone). */
function sweepCharts() {
  for (const [id, entry] of state.charts) {
    if (!state.used.has(id)) {
      entry.plot && entry.plot.destroy();
      state.charts.delete(id);
    }
  }
  state.used = new Set();
}

/** The request-rate, latency and error charts of one endpoint's series document. */
function trafficCharts(prefix, doc, variantNames) {
  const xs = doc.t || [];
  const period = doc.period || 1;
  const rate = [];
  const latency = [];
  const errors = [];
  variantNames.forEach((name, index) => {
    const v = (doc.variants || {})[name];
    if (!v) return;
    const c = colour(index);
    rate.push({ label: name, colour: c, values: v.invocations.map((n) => (n === null ? null : n / period)) });
    latency.push({ label: `${name} p50`, colour: c, values: v.p50 });
    latency.push({ label: `${name} p99`, colour: c, values: v.p99, dash: [6, 4] });
    errors.push({ label: `${name} 4xx`, colour: c, values: v.errors4xx.map((n) => (n === null ? null : n / period)), dash: [2, 3] });
    errors.push({ label: `${name} 5xx`, colour: c, values: v.errors5xx.map((n) => (n === null ? null : n / period)) });
  });
  const zero = { fromZero: true };
  const charts = [
    chart(`${prefix}-rate`, "Request rate", "req/s", xs, rate, zero),
    chart(`${prefix}-latency`, "Latency p50 / p99 (dashed)", "ms", xs, latency, zero),
  ];
  return { charts, errors: chart(`${prefix}-errors`, "Errors 4xx (dotted) / 5xx", "req/s", xs, errors, zero) };
}

function backlogChart(prefix, backlog) {
  if (!backlog) return null;
  return chart(`${prefix}-backlog`, "Async backlog", "requests", backlog.t || [], [
    { label: "ApproximateBacklogSize", colour: PALETTE[4], values: backlog.v || [] },
  ], { fromZero: true });
}

// ---- pages -----------------------------------------------------------------------------------------------

/** The variants table: weights, configured vs live share, instances (and serverless figures). */
function variantsTable(endpoint, withInstances) {
  const rows = endpoint.variants.map((v, index) => {
    const shares = endpoint.split.shares;
    const live = shares ? shares[v.name] ?? 0 : null;
    const bar = el(
      "div",
      { class: "bar", title: "live share; the mark is the configured share" },
      el("span", { style: { width: `${((live || 0) * 100).toFixed(1)}%`, background: colour(index) } }),
      el("i", { style: { left: `${(v.configuredShare * 100).toFixed(1)}%` } }),
    );
    const sl = v.serverlessFigures;
    const instances = sl
      ? `${text(sl.instances)} serverless (in flight ${text(sl.in_flight)}/${text(sl.max_concurrency)})`
      : `${text(v.instanceCount)}${v.desiredInstanceCount !== v.instanceCount && v.desiredInstanceCount != null ? ` → ${v.desiredInstanceCount}` : ""}`;
    return el(
      "tr",
      { dataset: { variant: v.name } },
      el("td", {}, el("span", { class: "swatch", style: { background: colour(index) } }), v.name),
      el("td", { class: "num", dataset: { weight: v.weight } }, text(v.weight)),
      el("td", { class: "num", dataset: { configuredShare: v.configuredShare } }, pct(v.configuredShare)),
      el("td", { class: "num", dataset: { liveShare: live === null ? "" : live } }, pct(live)),
      el("td", {}, bar),
      el("td", {}, instances),
      withInstances
        ? el("td", {}, v.instances.map((i) => el("div", {}, `${i.InstanceId} · ${i.Outstanding} in flight · ${i.Served} served`)))
        : null,
    );
  });
  const split = endpoint.split;
  const headers = ["Variant", "Weight", "Configured", `Live (last ${split.seconds} s: ${split.invocations} calls)`, "Split", "Instances"];
  if (withInstances) headers.push("Model servers");
  const node = table(headers, rows, [1, 2, 3]);
  node.dataset.splitInvocations = String(split.invocations);
  return node;
}

function renderOverview(doc) {
  const parts = [el("h1", {}, "Endpoints")];
  if (!doc.endpoints.length) parts.push(el("p", { class: "muted" }, "No endpoints."));
  for (const ep of doc.endpoints) {
    const names = ep.variants.map((v) => v.name);
    const running = ep.variants.length > 0;
    const charts = running ? trafficCharts(`ov-${ep.name}`, ep.live, names).charts : [];
    const backlog = running ? backlogChart(`ov-${ep.name}`, ep.backlog) : null;
    parts.push(
      el(
        "section",
        { class: "card", dataset: { endpoint: ep.name } },
        el(
          "div",
          { class: "card-head" },
          link(`/console/endpoints/${encodeURIComponent(ep.name)}`, el("span", { class: "name" }, ep.name)),
          badge(ep.status),
          el("span", { class: "muted" }, `config ${text(ep.config)}`),
          ep.async ? el("span", { class: "badge" }, "async") : null,
        ),
        ep.failureReason ? el("p", { class: "error" }, ep.failureReason) : null,
        running ? variantsTable(ep, false) : el("p", { class: "muted" }, "No variant is running."),
        running ? el("div", { class: "charts" }, charts, backlog) : null,
      ),
    );
  }
  parts.push(el("h1", {}, "Jobs"), jobsTables(doc.jobs));
  return parts;
}

function jobsTables(jobs) {
  const kinds = [
    ["training", "Training jobs", "training-jobs"],
    ["tuning", "Tuning jobs", "tuning-jobs"],
    ["transform", "Transform jobs", "transform-jobs"],
    ["processing", "Processing jobs", "processing-jobs"],
  ];
  return el(
    "div",
    { class: "jobs" },
    kinds.map(([kind, title, path]) =>
      el(
        "section",
        { class: "card", dataset: { jobs: kind } },
        el("h2", {}, title),
        jobs[kind].length
          ? table(
              ["Name", "Status", "Created", "Duration"],
              jobs[kind].map((j) =>
                el(
                  "tr",
                  {},
                  el("td", {}, link(`/console/${path}/${encodeURIComponent(j.name)}`, j.name)),
                  el("td", {}, badge(j.status)),
                  el("td", {}, when(j.created)),
                  el("td", { class: "num" }, duration(j.created, j.ended)),
                ),
              ),
              [3],
            )
          : el("p", { class: "muted" }, "None."),
      ),
    ),
  );
}

function renderEndpoint(doc) {
  const names = doc.variants.map((v) => v.name);
  const { charts, errors } = trafficCharts(`ep-${doc.name}-${doc.window}`, doc.series, names);
  const windows = el(
    "div",
    { class: "windows" },
    ["10m", "3h", "1d", "15d"].map((w) =>
      el("button", { type: "button", class: w === doc.window ? "active" : null, onclick: () => chooseWindow(w) }, w),
    ),
  );
  const errorRows = doc.errors.map((e) => el("tr", {}, el("td", {}, e.variant), el("td", {}, e.instance), el("td", {}, e.line)));
  return [
    el(
      "section",
      { class: "card", dataset: { endpoint: doc.name } },
      el("div", { class: "card-head" }, el("h1", {}, doc.name), badge(doc.status), doc.async ? el("span", { class: "badge" }, "async") : null),
      doc.failureReason ? el("p", { class: "error" }, doc.failureReason) : null,
      facts([
        ["Endpoint config", text(doc.config)],
        ["Created", when(doc.created)],
        ["Last modified", when(doc.modified)],
      ]),
      variantsTable(doc, true),
    ),
    el(
      "section",
      { class: "card" },
      el("div", { class: "card-head" }, el("h2", {}, "Traffic per variant"), windows),
      el("div", { class: "charts" }, charts, errors, backlogChart(`ep-${doc.name}-${doc.window}`, doc.backlog)),
    ),
    el(
      "section",
      { class: "card" },
      el("h2", {}, "Recent errors in the model servers' logs"),
      errorRows.length ? table(["Variant", "Instance", "Line"], errorRows) : el("p", { class: "muted" }, "None."),
    ),
  ];
}

function chooseWindow(w) {
  state.window = w;
  const url = new URL(location.href);
  url.searchParams.set("window", w);
  history.replaceState(null, "", url);
  refresh();
}

function logTail(lines) {
  const pre = el("pre", { class: "log", dataset: { lines: lines.length } }, lines.join("\n"));
  return el("section", { class: "card" }, el("h2", {}, "Log (last lines)"), lines.length ? pre : el("p", { class: "muted" }, "No log yet."));
}

function renderTraining(doc) {
  const curves = Object.entries(doc.curves || {}).map(([metric, curve], index) =>
    chart(`tr-${doc.name}-${metric}`, metric, "value", curve.t, [{ label: metric, colour: colour(index), values: curve.v }], {
      points: true,
    }),
  );
  const transitions = doc.transitions.map((t) =>
    el("tr", {}, el("td", {}, badge(t.Status)), el("td", {}, when(t.StartTime)), el("td", { class: "num" }, duration(t.StartTime, t.EndTime || (doc.ended ? doc.ended : null))), el("td", {}, text(t.StatusMessage))),
  );
  const hps = Object.entries(doc.hyperParameters).map(([k, v]) => el("tr", { dataset: { hyperparameter: k } }, el("td", {}, k), el("td", {}, v)));
  const finals = doc.finalMetrics.map((m) => el("tr", {}, el("td", {}, m.MetricName), el("td", { class: "num" }, text(m.Value)), el("td", {}, when(m.Timestamp))));
  return [
    el(
      "section",
      { class: "card" },
      el("div", { class: "card-head" }, el("h1", {}, doc.name), badge(doc.status), el("span", { class: "muted" }, text(doc.secondaryStatus))),
      doc.failureReason ? el("p", { class: "error" }, doc.failureReason) : null,
      facts([
        ["Image", text(doc.image)],
        doc.tuningJob ? ["Tuning job", link(`/console/tuning-jobs/${encodeURIComponent(doc.tuningJob)}`, doc.tuningJob)] : null,
        ["Instances", `${text(doc.instanceCount)} × ${text(doc.instanceType)}`],
        ["Created", when(doc.created)],
        ["Training time", duration(doc.started, doc.ended)],
      ]),
    ),
    el("section", { class: "card" }, el("h2", {}, "Metrics"), curves.length ? el("div", { class: "charts" }, curves) : el("p", { class: "muted" }, "No metric yet."),
      finals.length ? table(["Final metric", "Value", "At"], finals, [1]) : null),
    el("section", { class: "card" }, el("h2", {}, "Status transitions"), table(["Status", "Started", "Took", "Message"], transitions, [2])),
    el("section", { class: "card" }, el("h2", {}, "Hyperparameters"), hps.length ? table(["Name", "Value"], hps) : el("p", { class: "muted" }, "None.")),
    logTail(doc.log),
  ];
}

function renderTuning(doc) {
  const xs = doc.trials.map((t) => t.index);
  const objective = doc.objective.name || "objective";
  const plot = chart(
    `tu-${doc.name}`,
    `${objective} per trial (${text(doc.objective.type)})`,
    "value",
    xs,
    [
      { label: objective, colour: PALETTE[0], values: doc.trials.map((t) => t.objective), pointsOnly: true, pointSize: 10 },
      { label: "best so far", colour: PALETTE[2], values: doc.trials.map((t) => t.bestSoFar), width: 2, showPoints: false },
    ],
    { xUnit: "trial", points: true },
  );
  const rows = doc.trials.map((t) =>
    el("tr", {}, el("td", { class: "num" }, t.index), el("td", {}, link(`/console/training-jobs/${encodeURIComponent(t.name)}`, t.name)), el("td", {}, badge(t.status)), el("td", { class: "num" }, text(t.objective)),
      el("td", {}, Object.entries(t.hyperParameters).map(([k, v]) => `${k}=${v}`).join(", "))),
  );
  const counters = Object.entries(doc.counters).map(([k, v]) => `${k} ${v}`).join(" · ");
  return [
    el("section", { class: "card" }, el("div", { class: "card-head" }, el("h1", {}, doc.name), badge(doc.status), el("span", { class: "muted" }, text(doc.strategy))),
      doc.failureReason ? el("p", { class: "error" }, doc.failureReason) : null,
      facts([["Objective", `${text(doc.objective.type)} ${text(doc.objective.name)}`], ["Training jobs", counters || "–"], ["Best", text(doc.best)]])),
    el("section", { class: "card" }, el("h2", {}, "Objective"), el("div", { class: "charts one" }, plot)),
    el("section", { class: "card" }, el("h2", {}, "Trials"), table(["#", "Training job", "Status", "Objective", "Hyperparameters"], rows, [0, 3])),
  ];
}

function progressRow(label, done, total) {
  return [el("dt", {}, label), el("dd", {}, el("progress", { max: total || 1, value: done || 0 }), ` ${text(done)} / ${text(total)}`)];
}

function renderTransform(doc) {
  const p = doc.progress;
  return [
    el("section", { class: "card" }, el("div", { class: "card-head" }, el("h1", {}, doc.name), badge(doc.status)),
      doc.failureReason ? el("p", { class: "error" }, doc.failureReason) : null,
      facts([["Model", text(doc.model)], ["Input", text(doc.input)], ["Output", text(doc.output)], ["Created", when(doc.created)], ["Running for", duration(doc.started || doc.created, doc.ended)]]),
      el("h2", {}, "Progress"),
      p ? el("dl", { class: "facts", dataset: { records: p.records } }, progressRow("Bytes", p.bytesDone, p.bytesTotal), progressRow("Parts", p.partsDone, p.partsTotal),
        progressRow("Files", p.filesDone, p.filesTotal), [el("dt", {}, "Records"), el("dd", {}, text(p.records))])
        : el("p", { class: "muted" }, "No progress reported yet.")),
    logTail(doc.log),
  ];
}

function renderProcessing(doc) {
  return [
    el("section", { class: "card" }, el("div", { class: "card-head" }, el("h1", {}, doc.name), badge(doc.status)),
      doc.failureReason ? el("p", { class: "error" }, doc.failureReason) : null,
      facts([["Image", text(doc.image)], ["Created", when(doc.created)], ["Running for", duration(doc.started || doc.created, doc.ended)]])),
    logTail(doc.log),
  ];
}

// ---- routing and refresh ---------------------------------------------------------------------------------

/** What the path names: [api url, renderer, crumbs]. */
function route() {
  const parts = location.pathname.replace(/\/+$/, "").split("/").slice(2).map(decodeURIComponent);
  const [kind, name] = parts;
  const api = (p) => `/console/api/${p}/${encodeURIComponent(name)}`;
  const pages = {
    endpoints: [() => `${api("endpoints")}?window=${encodeURIComponent(state.window)}`, renderEndpoint, "Endpoint"],
    "training-jobs": [() => api("training-jobs"), renderTraining, "Training job"],
    "tuning-jobs": [() => api("tuning-jobs"), renderTuning, "Tuning job"],
    "transform-jobs": [() => api("transform-jobs"), renderTransform, "Transform job"],
    "processing-jobs": [() => api("processing-jobs"), renderProcessing, "Processing job"],
  };
  if (kind && name && pages[kind]) {
    const [url, render, label] = pages[kind];
    return { url, render, crumbs: [link("/console", "Overview"), ` › ${label} › `, name] };
  }
  return { url: () => "/console/api/overview", render: renderOverview, crumbs: ["Overview"] };
}

async function refresh() {
  clearTimeout(state.timer);
  const page = route();
  try {
    const answer = await fetch(page.url(), { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (answer.status === 401) {
      location.assign("/console/login");
      return;
    }
    const doc = await answer.json();
    const main = document.getElementById("main");
    if (!answer.ok) {
      main.replaceChildren(el("p", { class: "error" }, doc.message || `The platform answered ${answer.status}.`));
    } else {
      const nodes = page.render(doc);
      main.replaceChildren(...nodes.filter(Boolean));
      drawPending();
      sweepCharts();
      state.refreshes += 1;
      document.body.dataset.refreshes = String(state.refreshes);
      document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    }
    document.getElementById("crumbs").replaceChildren(...page.crumbs);
  } catch (error) {
    document.getElementById("updated").textContent = `not updated: ${error.message}`;
  } finally {
    state.timer = setTimeout(refresh, REFRESH_MS);
  }
}

async function showSession() {
  const answer = await fetch("/console/api/session", { credentials: "same-origin" });
  const doc = await answer.json();
  if (doc.keyId) {
    document.getElementById("who").textContent = `signed in as ${doc.name || doc.keyId}`;
    const button = document.getElementById("signout");
    button.hidden = false;
    button.addEventListener("click", async () => {
      await fetch("/console/logout", { method: "POST", credentials: "same-origin" });
      location.assign("/console/login");
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  showSession().catch(() => {});
  refresh();
});
