// simcore live dashboard: plain JS, no build step. Data: REST under /api, live rows over SSE.
"use strict";

const $ = (sel) => document.querySelector(sel);
const LLM = ["llm_calls", "llm_cache_hits", "llm_seconds", "llm_fallbacks"];
// Everything model-specific comes from the run (GET /api/runs/{id}), i.e. from the model's registry entry
// (scenarios/registry.py): metric_groups (one chart each), graph (the network view's kind, or null),
// series_colors (optional colours of series and node states) and agent_states (the sampled agents' filter).
const PALETTE = ["#2563eb", "#f59e0b", "#dc2626", "#16a34a", "#7c3aed", "#0891b2", "#db2777", "#374151", "#65a30d", "#ea580c"];
const groupDiv = (i) => `chart-group-${i}`;
function colorOf(name, i) {
  const c = (state.detail && state.detail.series_colors) || {};
  return c[name] || PALETTE[i % PALETTE.length];
}
function streamColumns() {
  const want = [...state.groups.flatMap((g) => g.columns), "wall_seconds", ...LLM];
  const have = new Set((state.detail && state.detail.columns) || []);
  return [...new Set(have.size ? want.filter((c) => have.has(c)) : want)];
}
const LAYER_COLORS = ["#94a3b8", "#c4b5fd", "#99f6e4", "#fcd34d", "#cbd5e1"];
const PLOT_CONFIG = { displaylogo: false, responsive: true };
const TERMINAL = new Set(["completed", "stopped", "failed", "interrupted"]);

const state = {
  info: null, runs: [], runId: null, detail: null, source: null,
  pending: [], lastStep: -1, llm: { calls: 0, hits: 0, secs: 0, fallbacks: 0, seen: false },
  agentsOffset: 0, agentsLimit: 50, network: null, timers: [], groups: [],
};

// -- HTTP ---------------------------------------------------------------------------------------
function token() { return localStorage.getItem("simcore-token") || ""; }

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && token()) headers["Authorization"] = "Bearer " + token();
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (!res.ok) {
    const msg = data && data.field ? `${data.field}: ${data.reason}` : (data && data.detail) || res.statusText;
    const err = new Error(`${res.status}: ${typeof msg === "string" ? msg : JSON.stringify(msg)}`);
    err.status = res.status; err.data = data;
    throw err;
  }
  return { status: res.status, data };
}

function show(el, text, kind) {
  el.textContent = text;
  el.className = "msg" + (kind ? " " + kind : "");
}

// -- start form ---------------------------------------------------------------------------------
let uploaded = null;  // {name, text}

function scenarioRequest() {
  const overrides = $("#overrides").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const req = { overrides, start_paused: $("#start-paused").checked };
  if (uploaded) req.yaml = uploaded.text; else req.scenario = $("#scenario-select").value;
  return req;
}

async function loadScenarios() {
  const { data } = await api("GET", "/api/scenarios");
  const sel = $("#scenario-select");
  sel.innerHTML = "";
  for (const s of data) {
    const opt = document.createElement("option");
    opt.value = s.name;
    opt.textContent = `${s.name} — ${s.agents.toLocaleString()} agents, ${s.steps} steps`;
    sel.appendChild(opt);
  }
  if (data.some((s) => s.name === "covid_small")) sel.value = "covid_small";
}

$("#scenario-file").addEventListener("change", async (ev) => {
  const f = ev.target.files[0];
  if (!f) { uploaded = null; $("#file-name").textContent = ""; return; }
  if (state.info && f.size > state.info.max_upload_bytes) {
    show($("#start-msg"), `file too large (limit ${state.info.max_upload_bytes} bytes)`, "error");
    ev.target.value = ""; uploaded = null; return;
  }
  uploaded = { name: f.name, text: await f.text() };
  $("#file-name").innerHTML = `using <b></b> instead of the built-in <button type="button" id="clear-file">clear</button>`;
  $("#file-name b").textContent = f.name;
  $("#clear-file").onclick = () => { uploaded = null; $("#scenario-file").value = ""; $("#file-name").textContent = ""; };
});

$("#validate-btn").addEventListener("click", async () => {
  try {
    const { data } = await api("POST", "/api/scenarios/validate", scenarioRequest());
    show($("#start-msg"), `ok: ${data.name} (${data.model}, ${data.agents.toLocaleString()} agents, ${data.steps} steps)`, "ok");
  } catch (e) { show($("#start-msg"), e.message, "error"); }
});

$("#start-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#start-btn").disabled = true;
  try {
    const { data } = await api("POST", "/api/runs", scenarioRequest());
    show($("#start-msg"), `started ${data.id}`, "ok");
    await refreshRuns();
    selectRun(data.id);
  } catch (e) { show($("#start-msg"), e.message, "error"); }
  finally { $("#start-btn").disabled = false; }
});

// -- run list -----------------------------------------------------------------------------------
async function refreshRuns() {
  try {
    const { data } = await api("GET", "/api/runs");
    state.runs = data;
    const body = $("#runs-table tbody");
    body.innerHTML = "";
    for (const r of data) {
      const tr = document.createElement("tr");
      tr.dataset.id = r.id;
      if (r.id === state.runId) tr.className = "selected";
      tr.innerHTML = `<td></td><td><span class="badge ${r.status}">${r.status}</span></td><td>${r.step ?? ""}/${r.steps ?? ""}</td>`;
      tr.firstChild.textContent = r.id;
      tr.firstChild.title = r.id;
      tr.onclick = () => selectRun(r.id);
      body.appendChild(tr);
    }
  } catch (e) { console.warn("runs:", e); }
}

// -- selected run -------------------------------------------------------------------------------
function resetCharts() {
  const layout = (y) => ({ margin: { l: 55, r: 10, t: 10, b: 35 }, xaxis: { title: { text: "step" } },
                           yaxis: { title: { text: y } }, legend: { orientation: "h" }, uirevision: "keep" });
  for (const el of document.querySelectorAll(".panel.model-group")) { Plotly.purge(el.querySelector(".chart")); el.remove(); }
  const host = $("#model-charts");
  $("#no-groups").hidden = state.groups.length > 0;
  const panels = state.groups.map((g, i) => {  // every panel first, so that each chart is sized to its final cell
    const panel = document.createElement("div");
    panel.className = "panel model-group";
    panel.innerHTML = `<h3></h3><div id="${groupDiv(i)}" class="chart"></div>`;
    panel.querySelector("h3").textContent = g.title;
    host.appendChild(panel);
    return panel;
  });
  state.groups.forEach((g, i) => {
    Plotly.newPlot(panels[i].querySelector(".chart"), g.columns.map((n, j) => ({ x: [], y: [], name: n, mode: "lines",
                                                                               line: { color: colorOf(n, j) } })),
                   layout(""), PLOT_CONFIG);
  });
  Plotly.newPlot("chart-speed", [{ x: [], y: [], name: "steps/s (compute)", mode: "lines", line: { color: "#2563eb" } }],
                 layout("steps / s"), PLOT_CONFIG);
  Plotly.newPlot("chart-llm", [
    { x: [], y: [], name: "calls", mode: "lines" }, { x: [], y: [], name: "cache hits", mode: "lines" },
    { x: [], y: [], name: "fallbacks", mode: "lines" },
    { x: [], y: [], name: "seconds", mode: "lines", yaxis: "y2", line: { dash: "dot" } },
  ], { ...layout("per step"), margin: { l: 55, r: 45, t: 10, b: 35 },
       yaxis2: { overlaying: "y", side: "right", title: { text: "LLM s" } } }, PLOT_CONFIG);
  state.llm = { calls: 0, hits: 0, secs: 0, fallbacks: 0, seen: false };
  $("#llm-body").hidden = true; $("#llm-empty").hidden = false;
}

function closeStream() {
  if (state.source) { state.source.close(); state.source = null; }
}

async function selectRun(id) {
  closeStream();
  state.runId = id; state.pending = []; state.lastStep = -1; state.agentsOffset = 0; state.network = null;
  for (const tr of document.querySelectorAll("#runs-table tbody tr")) tr.classList.toggle("selected", tr.dataset.id === id);
  $("#no-run").hidden = true; $("#run-panel").hidden = false;
  state.groups = []; state.detail = null;
  $("#network-msg").textContent = ""; Plotly.purge("network");
  await refreshDetail();
  state.groups = (state.detail && state.detail.metric_groups) || [];
  resetCharts();
  openStream(id);
  refreshAgents(); refreshNetwork(true); refreshFiles();
  $("#interview-list").textContent = ""; show($("#interview-msg"), "", ""); refreshInterviews();
}

function openStream(id) {
  const url = `/api/runs/${encodeURIComponent(id)}/stream?columns=${streamColumns().join(",")}&interval=0.25`;
  const src = new EventSource(url);
  state.source = src;
  const onRows = (ev) => {
    if (state.runId !== id) return;
    for (const row of JSON.parse(ev.data)) {
      if (row.step > state.lastStep) { state.pending.push(row); state.lastStep = row.step; }
    }
  };
  src.addEventListener("history", onRows);
  src.addEventListener("metrics", onRows);
  src.addEventListener("status", (ev) => { if (state.runId === id) applyStatus(JSON.parse(ev.data)); });
  src.addEventListener("end", () => { src.close(); if (state.runId === id) { refreshDetail(); refreshFiles(); refreshAgents(); refreshNetwork(false); } });
  src.onerror = () => { /* EventSource reconnects by itself, resuming after Last-Event-ID */ };
}

function applyStatus(s) {
  const badge = $("#run-status");
  badge.textContent = s.status; badge.className = "badge " + s.status;
  if (s.step !== undefined && s.step !== null) $("#run-step").textContent = s.step;
  if (s.steps) $("#run-steps").textContent = s.steps;
  if (s.steps_per_second) $("#run-speed").textContent = s.steps_per_second.toFixed(1);
  if (state.detail) {
    state.detail.status = s.status;
    if (s.schedule_now) state.detail.schedule_now = s.schedule_now;
    if (s.live_interventions) state.detail.live_interventions = s.live_interventions;
    renderControls();
  }
}

async function refreshDetail() {
  if (!state.runId) return;
  const id = state.runId;
  try {
    const { data } = await api("GET", `/api/runs/${encodeURIComponent(id)}`);
    if (state.runId !== id) return;
    state.detail = data;
    $("#run-title").textContent = data.id;
    $("#run-sub").textContent = `${data.scenario} · ${data.model} · ${(data.agents || 0).toLocaleString()} agents · seed ${data.seed}` +
      (data.live ? "" : " · from disk") + (data.error ? ` · error: ${data.error}` : "");
    applyStatus({ status: data.status, step: data.step, steps: data.steps, steps_per_second: data.steps_per_second });
    const sel = $("#iv-param"), keep = sel.value;
    sel.innerHTML = "";
    for (const p of data.scheduled_params || []) { const o = document.createElement("option"); o.textContent = p; sel.appendChild(o); }
    if (keep) sel.value = keep;
    const steps = $("#agents-step"), keepStep = steps.value;
    steps.innerHTML = "";
    for (const s of (data.agent_steps || []).slice().reverse()) { const o = document.createElement("option"); o.textContent = s; steps.appendChild(o); }
    if (keepStep && (data.agent_steps || []).includes(Number(keepStep))) steps.value = keepStep;
    renderControls();
  } catch (e) { show($("#control-msg"), e.message, "error"); }
}

function renderControls() {
  const d = state.detail; if (!d) return;
  const live = d.live && !TERMINAL.has(d.status);
  $("#pause-btn").disabled = !live || d.status === "paused";
  $("#resume-btn").disabled = !live || d.status !== "paused";
  $("#step-btn").disabled = !live || d.status !== "paused";
  $("#stop-btn").disabled = !live;
  $("#intervene-btn").disabled = !live;
  const now = (d.schedule_now || {})[$("#iv-param").value];
  $("#iv-now").textContent = now === undefined ? "" : `now: ${Number(now).toPrecision(4)}`;
  const list = $("#iv-list");
  list.innerHTML = "";
  for (const iv of d.live_interventions || []) {
    const li = document.createElement("li");
    li.textContent = `step ${iv.step}: ${iv.param} ${iv.mode} ${iv.value} (steps ${iv.start}–${iv.end})`;
    list.appendChild(li);
  }
}

async function control(path, body) {
  const id = state.runId; if (!id) return;
  try {
    const { status, data } = await api("POST", `/api/runs/${encodeURIComponent(id)}/${path}`, body);
    show($("#control-msg"), status === 202 ? `${path}: queued (the run is busy; it applies at the next chunk)` : `${path}: ok (step ${data.run.step})`, "ok");
    state.detail = { ...state.detail, ...data.run };
    applyStatus(data.run);
  } catch (e) { show($("#control-msg"), e.message, "error"); }
}

$("#pause-btn").onclick = () => control("pause");
$("#resume-btn").onclick = () => control("resume");
$("#stop-btn").onclick = () => control("stop");
$("#step-btn").onclick = () => control("step", { n: Math.max(1, parseInt($("#step-n").value || "1", 10)) });
$("#iv-param").onchange = renderControls;
$("#intervene-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  control("interventions", { param: $("#iv-param").value, mode: $("#iv-mode").value, value: parseFloat($("#iv-value").value) });
});

// -- interviews: ask an agent or archetype at a step (restored from the run's checkpoints) -------
function renderInterviews(rows) {
  const ul = $("#interview-list"); ul.textContent = "";
  for (const r of rows.slice(-10).reverse()) {
    const li = document.createElement("li");
    const who = r.agent_id !== null && r.agent_id !== undefined ? `agent ${r.agent_id}` : `archetype ${r.archetype}`;
    const probs = (r.options || []).map((o, i) => `${o} ${(100 * r.probs[i]).toFixed(1)}%`).join(", ");
    li.textContent = `step ${r.step}, ${who}: “${r.question}” → ${r.error ? "(no answer: " + r.error + ")" : r.answer}` + (probs ? ` [${probs}]` : "");
    ul.appendChild(li);
  }
}

async function refreshInterviews() {
  const id = state.runId; if (!id) return;
  try {
    const { data } = await api("GET", `/api/runs/${encodeURIComponent(id)}/interviews`);
    if (state.runId === id) renderInterviews(data);
  } catch (e) { show($("#interview-msg"), e.message, "error"); }
}

$("#interview-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const id = state.runId; if (!id) return;
  const body = { step: parseInt($("#ivw-step").value || "0", 10), question: $("#ivw-question").value,
                 max_tokens: parseInt($("#ivw-max").value || "64", 10) };
  const agent = $("#ivw-agent").value.trim(), archetype = $("#ivw-archetype").value.trim();
  if (agent !== "") body.agent = parseInt(agent, 10);
  if (archetype !== "") body.archetype = archetype;
  const opts = $("#ivw-options").value.split("|").map((o) => o.trim()).filter((o) => o);
  if (opts.length) body.options = opts;
  show($("#interview-msg"), "asking… (restoring the run at that step)", "");
  $("#interview-btn").disabled = true;
  try {
    const { data } = await api("POST", `/api/runs/${encodeURIComponent(id)}/interviews`, body);
    show($("#interview-msg"), `answered in ${(data.restore_seconds + data.seconds).toFixed(1)} s by ${data.backend}`, "ok");
    refreshInterviews();
  } catch (e) { show($("#interview-msg"), e.message, "error"); }
  finally { $("#interview-btn").disabled = false; }
});

// -- charts: rows arrive on the stream, drawn at most a few times a second ----------------------
function flushCharts() {
  if (!state.pending.length || $("#run-panel").hidden) return;
  const rows = state.pending; state.pending = [];
  const x = rows.map((r) => r.step);
  const col = (name) => rows.map((r) => (r[name] === undefined ? null : r[name]));
  state.groups.forEach((g, i) => {
    if (g.columns.length) Plotly.extendTraces(groupDiv(i), { x: g.columns.map(() => x), y: g.columns.map(col) }, g.columns.map((_, j) => j));
  });
  Plotly.extendTraces("chart-speed", { x: [x], y: [rows.map((r) => (r.wall_seconds > 0 ? 1 / r.wall_seconds : null))] }, [0]);
  const last = rows[rows.length - 1];
  $("#run-step").textContent = Math.max(Number($("#run-step").textContent) || 0, last.step + 1);
  if (rows.some((r) => LLM.some((k) => k in r))) {
    const L = state.llm; L.seen = true;
    for (const r of rows) {
      L.calls += r.llm_calls || 0; L.hits += r.llm_cache_hits || 0;
      L.secs += r.llm_seconds || 0; L.fallbacks += r.llm_fallbacks || 0;
    }
    if ($("#llm-body").hidden) {  // drawn while hidden: size it to its panel now
      $("#llm-body").hidden = false; $("#llm-empty").hidden = true;
      Plotly.Plots.resize("chart-llm");
    }
    $("#llm-calls").textContent = L.calls.toLocaleString();
    $("#llm-hit").textContent = L.calls ? (100 * L.hits / L.calls).toFixed(1) + "%" : "–";
    $("#llm-secs").textContent = L.secs.toFixed(1);
    $("#llm-fallbacks").textContent = L.fallbacks.toLocaleString();
    Plotly.extendTraces("chart-llm", { x: [x, x, x, x], y: [col("llm_calls"), col("llm_cache_hits"), col("llm_fallbacks"), col("llm_seconds")] }, [0, 1, 2, 3]);
  }
}

// -- sampled agents -----------------------------------------------------------------------------
async function refreshAgents() {
  const id = state.runId; if (!id) return;
  const step = $("#agents-step").value;
  const st = $("#agents-state").value;
  const q = new URLSearchParams({ offset: state.agentsOffset, limit: state.agentsLimit });
  if (step) q.set("step", step);
  if (st) q.set("state", st);
  try {
    const { data } = await api("GET", `/api/runs/${encodeURIComponent(id)}/agents?${q}`);
    if (state.runId !== id) return;
    const names = Object.keys(data.columns);
    const thead = $("#agents-table thead"), tbody = $("#agents-table tbody");
    thead.innerHTML = ""; tbody.innerHTML = "";
    const hr = document.createElement("tr");
    for (const n of names) { const th = document.createElement("th"); th.textContent = n; hr.appendChild(th); }
    thead.appendChild(hr);
    const n = names.length ? data.columns[names[0]].length : 0;
    for (let i = 0; i < n; i++) {
      const tr = document.createElement("tr");
      for (const k of names) { const td = document.createElement("td"); td.textContent = data.columns[k][i]; tr.appendChild(td); }
      tbody.appendChild(tr);
    }
    $("#agents-page").textContent = data.total ? `${data.offset + 1}–${data.offset + n} of ${data.total} (step ${data.step})` : "no samples yet";
    const stSel = $("#agents-state"), wanted = (state.detail && state.detail.agent_states) || [];
    if (stSel.options.length !== wanted.length + 1) {
      const keep = stSel.value;
      stSel.innerHTML = '<option value="">all</option>';
      for (const s of wanted) { const o = document.createElement("option"); o.textContent = s; stSel.appendChild(o); }
      if (wanted.includes(keep)) stSel.value = keep;
    }
  } catch (e) { $("#agents-page").textContent = e.message; }
}
$("#agents-step").onchange = () => { state.agentsOffset = 0; refreshAgents(); };
$("#agents-state").onchange = () => { state.agentsOffset = 0; refreshAgents(); };
$("#agents-prev").onclick = () => { state.agentsOffset = Math.max(0, state.agentsOffset - state.agentsLimit); refreshAgents(); };
$("#agents-next").onclick = () => { state.agentsOffset += state.agentsLimit; refreshAgents(); };

// -- network view -------------------------------------------------------------------------------
const GRAPH_TITLES = { contact: "Contact network", follow: "Follow graph" };
async function refreshNetwork(full) {
  const id = state.runId; if (!id) return;
  const kind = state.detail ? state.detail.graph : undefined;
  $("#network-title").textContent = GRAPH_TITLES[kind] || "Network";
  if (state.detail && !kind) { $("#network-msg").textContent = `model ${state.detail.model} has no graph to show`; return; }
  try {
    const { data } = await api("GET", `/api/runs/${encodeURIComponent(id)}/network`);
    if (state.runId !== id) return;
    const labels = data.labels || [];
    const colors = (data.state || []).map((c) => (c >= 0 && c < labels.length ? colorOf(labels[c], c) : "#999"));
    $("#network-note").textContent = `(sampled subgraph, colour = ${data.colour || "state"})`;
    if (full || !state.network) {
      const traces = data.layers.map((name, li) => {
        const ex = [], ey = [];
        for (const [i, j, l] of data.edges) if (l === li) { ex.push(data.x[i], data.x[j], null); ey.push(data.y[i], data.y[j], null); }
        return { x: ex, y: ey, mode: "lines", name, line: { width: 0.6, color: LAYER_COLORS[li % LAYER_COLORS.length] }, hoverinfo: "skip" };
      });
      labels.forEach((lab, k) => {  // legend entries for the node colours
        traces.push({ x: [null], y: [null], mode: "markers", name: lab, marker: { size: 8, color: colorOf(lab, k) } });
      });
      traces.push({ x: data.x, y: data.y, mode: "markers", name: "agents", showlegend: false, marker: { size: 7, color: colors, line: { width: 0.5, color: "#fff" } },
                    text: data.nodes.map((a, i) => `agent ${a}: ${labels[(data.state || [])[i]] ?? "?"}`), hoverinfo: "text" });
      Plotly.newPlot("network", traces, { margin: { l: 5, r: 5, t: 5, b: 5 }, showlegend: true, legend: { orientation: "h" },
                                          xaxis: { visible: false }, yaxis: { visible: false }, uirevision: "keep" }, PLOT_CONFIG);
      state.network = { nodeTrace: traces.length - 1 };
    } else {
      Plotly.restyle("network", { "marker.color": [colors] }, [state.network.nodeTrace]);
    }
    const what = data.graph === "follow" ? "follows" : "contacts";
    $("#network-msg").textContent = `${data.nodes.length} agents, ${data.edges.length} ${what}, ${data.colour || "states"} at step ${data.step}`;
  } catch (e) { $("#network-msg").textContent = e.status === 409 ? e.message.replace(/^409: /, "") : e.message; }
}

async function refreshFiles() {
  const id = state.runId; if (!id) return;
  const base = `/api/runs/${encodeURIComponent(id)}`;
  $("#reproduce-link").href = `${base}/scenario.yaml`;
  $("#archive-link").href = `${base}/archive.zip`;
  try {
    const { data } = await api("GET", `${base}/files`);
    const ul = $("#files-list"); ul.innerHTML = "";
    for (const f of data.filter((f) => !f.path.startsWith("agents/")).concat(data.filter((f) => f.path.startsWith("agents/")).slice(0, 3))) {
      const li = document.createElement("li"); const a = document.createElement("a");
      a.href = `${base}/files/${f.path.split("/").map(encodeURIComponent).join("/")}`;
      a.textContent = `${f.path} (${(f.bytes / 1024).toFixed(1)} kB)`;
      li.appendChild(a); ul.appendChild(li);
    }
    const nAgents = data.filter((f) => f.path.startsWith("agents/")).length;
    if (nAgents > 3) { const li = document.createElement("li"); li.className = "muted"; li.textContent = `… ${nAgents} agent partitions (in the zip)`; ul.appendChild(li); }
  } catch (e) { console.warn("files:", e); }
}

// -- boot ---------------------------------------------------------------------------------------
function every(ms, fn) { state.timers.push(setInterval(fn, ms)); }

async function boot() {
  const { data } = await api("GET", "/api/info");
  state.info = data;
  $("#server-info").textContent = `runs: ${data.runs_dir} · max ${data.max_runs} live runs`;
  if (data.auth_required) {
    $("#token-box").hidden = false;
    $("#token").value = token();
    $("#token").addEventListener("change", (ev) => localStorage.setItem("simcore-token", ev.target.value));
  }
  await loadScenarios();
  await refreshRuns();
  every(250, flushCharts);
  every(2000, refreshRuns);
  every(3000, () => {
    const d = state.detail;
    if (!d || !d.live || TERMINAL.has(d.status)) return;
    refreshDetail(); refreshAgents(); refreshNetwork(false); refreshFiles();
  });
  const fromHash = decodeURIComponent(location.hash.slice(1));
  if (fromHash) selectRun(fromHash);
}

window.addEventListener("hashchange", () => { const id = decodeURIComponent(location.hash.slice(1)); if (id && id !== state.runId) selectRun(id); });
boot().catch((e) => { $("#server-info").textContent = "cannot reach the server: " + e.message; });
