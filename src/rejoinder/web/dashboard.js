// The operator's dashboard: calls, one call's turns, latency over time, the weekly review.
// Plain DOM and uPlot (vendored); every text from a record goes in as textContent.
"use strict";

const STAGES = ["vad_end", "turn_confirmed", "stt_final", "llm_first_token", "first_clause",
                "tts_first_audio", "first_audio_sent"];
const STAGE_NAMES = {
  vad_end: "VAD end", turn_confirmed: "turn confirmed", stt_final: "STT final",
  llm_first_token: "LLM 1st token", first_clause: "1st clause",
  tts_first_audio: "TTS 1st audio", first_audio_sent: "1st audio sent",
  v2v: "voice-to-voice",
};
const COLOURS = ["#9aa5b1", "#6e7781", "#bf8700", "#8250df", "#cf222e", "#1a7f37",
                 "#0969da", "#111111"];
const PAGE = 25;

const $ = (sel) => document.querySelector(sel);
window.dashboard = { view: null, loaded: 0 };  // read by the tests

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

function ms(v) { return v === null || v === undefined ? "–" : `${Math.round(v)} ms`; }

async function api(path, options = {}) {
  const resp = await fetch(path, options);
  if (resp.status === 401) { location.reload(); throw new Error("signed out"); }
  let body = null;
  try { body = await resp.json(); } catch { /* reported below */ }
  if (!resp.ok) throw new Error(body && body.error ? body.error : `HTTP ${resp.status}`);
  return body;
}

function query(form, extra = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
  for (const [k, v] of Object.entries(extra)) if (v !== null && v !== "") q.set(k, v);
  return q.toString();
}

function fail(err) { $("#error").textContent = err.message; }

// -- calls -----------------------------------------------------------------------------
let offset = 0;

async function showCalls() {
  const body = await api(`/api/calls?${query($("#calls-filter"), { limit: PAGE, offset })}`);
  const rows = body.calls.map((c) => {
    const tr = el("tr", { class: "clickable", "data-call": c.call_id },
      el("td", { text: (c.started_at || "").replace("T", " ").slice(0, 19) }),
      el("td", { text: c.call_id.slice(0, 12) + "…", title: c.call_id }),
      el("td", { text: c.transport }), el("td", { text: c.agent }),
      el("td", { text: c.active ? "live" : (c.outcome || "–") }),
      el("td", { class: "num", text: String(c.turns) }),
      el("td", { class: "num", text: String(c.errors) }));
    tr.addEventListener("click", () => { location.hash = `#call/${c.call_id}`; });
    return tr;
  });
  $("#calls tbody").replaceChildren(...rows);
  const last = Math.min(offset + PAGE, body.total);
  $("#page-info").textContent = body.total ? `${offset + 1}–${last} of ${body.total}` : "";
  $("#prev").disabled = offset === 0;
  $("#next").disabled = last >= body.total;
}

// -- one call --------------------------------------------------------------------------
function waterfall(turn, scale) {
  const rows = STAGES.filter((s) => turn.ms_after_speech_end[s] !== undefined)
    .map((s) => [s, turn.ms_after_speech_end[s]]);
  if (turn.caller_v2v_ms !== null && turn.caller_v2v_ms !== undefined) {
    rows.push(["v2v", turn.caller_v2v_ms]);
  }
  const box = el("div", { class: "waterfall" });
  const pct = (v) => (100 * Math.max(0, v)) / scale;
  let reached = 0;  // the latest server stage so far: the darker part is this stage's own time
  for (const [stage, value] of rows) {
    const cls = stage === "v2v" ? "v2v" : "";
    const bar = el("div", { class: "bar" });
    bar.style.width = `${Math.max(0.5, pct(value))}%`;
    const own = el("div", { class: "own" });
    const from = stage === "v2v" ? value : Math.min(reached, value);
    own.style.left = `${pct(from)}%`;
    own.style.width = `${pct(value) - pct(from)}%`;
    if (stage !== "v2v") reached = Math.max(reached, value);
    box.append(
      el("span", { class: `label ${cls}`, text: stage === "v2v"
        ? "voice-to-voice (caller)" : STAGE_NAMES[stage] }),
      el("div", { class: `track ${cls}`, "data-stage": stage }, bar, own),
      el("span", { class: `value ${cls}`, text: ms(value) }));
  }
  return rows.length ? box : el("p", { class: "hint", text: "no stage times (the greeting)" });
}

function turnItem(t, scale) {
  const head = [`turn ${t.turn}`, t.outcome];
  if (t.speculation) head.push(`speculation ${t.speculation}`);
  if (t.tts_cached) head.push("phrase cache");
  if (t.error_code) head.push(`error ${t.error_code}`);
  const agent = el("p", { class: "say agent" }, el("span", { class: "who", text: "agent" }));
  if (t.interrupted && t.heard_text !== null) {
    const heard = t.heard_text || "";
    const rest = t.agent_text.startsWith(heard) ? t.agent_text.slice(heard.length) : "";
    agent.append(el("span", { class: "heard", text: heard }), " ",
                 el("span", { class: "unheard", text: rest.trim() }),
                 el("span", { class: "note", text: "interrupted: heard up to here" }));
  } else {
    agent.append(el("span", { text: t.agent_text || "–" }));
  }
  // Also on a reply that resumed (a backchannel, a cough): its audio stopped all the same.
  if (t.barge_in_stop_ms !== null && t.barge_in_stop_ms !== undefined) {
    agent.append(el("span", { class: "stop",
      text: `stopped ${ms(t.barge_in_stop_ms)} into the caller's speech` }));
  }
  const rails = (t.guardrails || []).map((g) => el("span",
    { class: `rail ${g.action === "blocked" ? "blocked" : "flagged"}`,
      text: `${g.action}: ${g.rule}` }));
  return el("li", { class: "turn", "data-turn": String(t.turn) },
    el("div", { class: "head", text: head.join(" · ") }),
    el("p", { class: "say you" }, el("span", { class: "who", text: "caller" }),
       el("span", { text: t.user_text || "–" })),
    agent,
    ...(rails.length ? [el("p", { class: "say guardrails" },
      el("span", { class: "who", text: "guard" }), ...rails)] : []),
    waterfall(t, scale));
}

function metaRows(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [
    el("dt", { text: k }),
    el("dd", { text: v === null || v === undefined ? "–"
      : typeof v === "object" ? JSON.stringify(v) : String(v) })]));
}

async function showCall(id) {
  const c = await api(`/api/calls/${encodeURIComponent(id)}`);
  $("#call-title").textContent = `Call ${c.call_id}`;
  metaRows($("#call-meta"), [["transport", c.transport], ["agent", c.agent],
    ["started", c.started_at], ["ended", c.ended_at],
    ["outcome", c.active ? "live" : c.outcome], ["turns", c.turns.length]]);
  let scale = 1;
  for (const t of c.turns) {
    scale = Math.max(scale, t.caller_v2v_ms || 0, ...Object.values(t.ms_after_speech_end));
  }
  $("#call-turns").replaceChildren(...c.turns.map((t) => turnItem(t, scale)));
  const tools = c.turns.flatMap((t) => t.tool_calls.map((x) => el("tr", {},
    el("td", { text: String(t.turn) }), el("td", { text: x.name }),
    el("td", { text: x.status }), el("td", { class: "num", text: ms(x.duration_ms) }),
    el("td", { text: x.arguments }))));
  $("#call-tools tbody").replaceChildren(...tools);
  const box = $("#call-analytics");
  box.hidden = !("analytics" in c);
  if ("analytics" in c) {
    const a = c.analytics;
    const pairs = a && typeof a === "object" ? Object.entries(a)
      : [["status", c.analytics_status || "none"]];
    metaRows(box.querySelector("dl"), pairs);
  }
  $("#delete-call").onclick = async () => {
    if (!confirm("Delete this call's record? It cannot be undone.")) return;
    await api(`/api/calls/${encodeURIComponent(id)}`, { method: "DELETE" });
    location.hash = "#calls";
  };
}

// -- latency ----------------------------------------------------------------------------
const charts = {};

function fillSelect(select, values) {
  const keep = select.value;
  select.replaceChildren(el("option", { value: "", text: "any" }),
                         ...values.map((v) => el("option", { value: v, text: v })));
  select.value = values.includes(keep) ? keep : "";
}

function drawChart(id, body, key) {
  const box = $(`#${id}`);
  if (charts[id]) { charts[id].destroy(); delete charts[id]; }
  box.replaceChildren();
  if (!body.buckets.length) {
    box.append(el("p", { class: "hint", text: "No turns in this range." }));
    return;
  }
  const names = [...STAGES, "v2v"];
  const xs = body.buckets.map((b) => Date.parse(b) / 1000);
  const data = [xs, ...names.map((s) => body.series[s][key])];
  const series = [{}, ...names.map((s, i) => ({
    label: STAGE_NAMES[s], stroke: COLOURS[i], width: s === "v2v" ? 2.5 : 1.5,
    points: { show: true, size: 5 }, spanGaps: false,
    value: (u, v) => (v === null ? "–" : `${Math.round(v)} ms`),
  }))];
  const width = Math.max(320, box.clientWidth || 900);
  charts[id] = new uPlot({
    width, height: 260, series, scales: { x: { time: true } },
    axes: [{}, { label: "ms", values: (u, ticks) => ticks.map((t) => `${t}`) }],
  }, data, box);
}

async function showLatency() {
  const body = await api(`/api/stats/latency?${query($("#latency-filter"))}`);
  const form = $("#latency-filter");
  fillSelect(form.elements.agent, body.agents);
  fillSelect(form.elements.transport, body.transports);
  $("#latency-table tbody").replaceChildren(...[...STAGES, "v2v"].map((s) => el("tr",
    { "data-stage": s },
    el("td", { text: s === "v2v" ? "voice-to-voice (caller where measured)"
      : STAGE_NAMES[s] }),
    el("td", { class: "num", text: ms(body.overall[s].p50) }),
    el("td", { class: "num", text: ms(body.overall[s].p95) }),
    el("td", { class: "num", text: String(body.overall[s].n) }))));
  drawChart("chart-p50", body, "p50");
  drawChart("chart-p95", body, "p95");
}

// -- review -----------------------------------------------------------------------------
function formatValue(v, unit) {
  if (v === null) return "–";
  if (unit === "ratio") return `${(100 * v).toFixed(1)} %`;
  if (unit === "ms") return `${Math.round(v)} ms`;
  return String(v);
}

const OPS = { "<=": "≤", ">=": "≥", "<": "<" };
const STATUS = { pass: "pass", fail: "fail", no_data: "no data", not_recorded: "not recorded" };

async function showReview() {
  const body = await api(`/api/review?${query($("#review-filter"))}`);
  $("#review-range").textContent =
    `${body.from} to ${body.to || "now"}: ${body.calls} calls, ${body.turns} turns`;
  $("#review tbody").replaceChildren(...body.checks.map((c) => el("tr",
    { "data-check": c.key, "data-status": c.status },
    el("td", { text: c.label }),
    el("td", { class: "num", text: formatValue(c.value, c.unit) }),
    el("td", { text: `${OPS[c.op]} ${formatValue(c.threshold, c.unit)}` }),
    el("td", {}, el("span", { class: `badge ${c.status}`, text: STATUS[c.status] })),
    el("td", { class: "hint", text: c.detail }))));
}

// -- routing ----------------------------------------------------------------------------
async function route() {
  const hash = location.hash.slice(1) || "calls";
  const [view, arg] = hash.split("/");
  const name = view === "call" && arg ? "call" : ["latency", "review"].includes(view)
    ? view : "calls";
  for (const section of document.querySelectorAll("section")) {
    section.hidden = section.id !== `view-${name}`;
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === (name === "call" ? "calls" : name));
  }
  $("#error").textContent = "";
  window.dashboard.view = name;
  try {
    if (name === "calls") await showCalls();
    else if (name === "call") await showCall(arg);
    else if (name === "latency") await showLatency();
    else await showReview();
  } catch (err) {
    fail(err);
  }
  window.dashboard.loaded += 1;
}

for (const [id, show] of [["calls-filter", () => { offset = 0; return route(); }],
                          ["latency-filter", showLatency], ["review-filter", showReview]]) {
  document.getElementById(id).addEventListener("submit", (e) => {
    e.preventDefault();
    show().catch(fail);
  });
}
$("#prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); route(); });
$("#next").addEventListener("click", () => { offset += PAGE; route(); });
window.addEventListener("hashchange", route);
route();
