// rejoinder call page: WebRTC to the server, a live transcript, and voice-to-voice
// latency measured here, from the audio itself (docs/design.md, "Definitions").
//
// Latency measurement. One AudioContext carries both the microphone stream and the
// agent's (remote) stream into one AudioWorkletNode with two inputs. We use an
// AudioWorklet (loaded from a Blob URL, because the server serves only / and /app.js)
// rather than AnalyserNodes polled with setInterval because the worklet
//   - sees every sample, so nothing falls between two polls;
//   - stamps each sample with the context's frame counter, so both streams share one
//     sample-accurate clock (an AnalyserNode poll is stamped when the timer happens to
//     fire: several ms of jitter, and timers in a hidden tab run once a second);
//   - runs on the audio thread, so main-thread work (rendering, GC) cannot delay it.
// In the worklet, the caller's end of speech (EoS) is the end of the last 10 ms window of
// mic audio louder than MIC_DBFS after a MIC_HIGHPASS_HZ high-pass (the windows and
// threshold of the program caller in rejoinder.client.measure), and the agent onset is
// the first agent sample at or above AGENT_AMP after AGENT_QUIET_MS without one.
// Latency = onset - EoS, kept only if the caller was silent at the onset, and given to the
// turn of the latest "user" event (or of the next one, if the audio outruns the event).
// Resolution: the EoS is quantised to 10 ms windows, the onset is exact to the sample.
// Limits: both streams reach the context through Chromium's capture and playout buffers
// (about 10 ms each, partly cancelling); the agent side is measured when it arrives at
// the page, not when it leaves the loudspeaker (add AudioContext.outputLatency for that);
// a threshold cannot tell quiet speech from loud noise (use ?raw=1 only in quiet rooms).
"use strict";

// Caller speech: a 10 ms window of high-passed mic audio louder than MIC_DBFS (RMS).
// Without the high-pass, rumble below 100 Hz (room, handling, breath) at -40..-45 dBFS
// counts as speech: in the LibriVox test sentences it moves the end of speech up to
// 270 ms past the words. The server never hears that rumble (Opus in VoIP mode
// high-passes it), so its VAD ends the turn earlier and the page would under-report.
const MIC_HIGHPASS_HZ = 100;
const MIC_DBFS = -40;
const AGENT_AMP = 500 / 32768;  // a non-silent agent sample (as rejoinder.client.measure)
const AGENT_QUIET_MS = 300;     // agent silence that makes the next loud sample an onset
const STAGES = ["vad_end", "stt_final", "llm_first_token", "first_clause",
                "tts_first_audio", "first_audio_sent"];

const params = new URLSearchParams(location.search);
const RAW = params.get("raw") === "1";

const $ = (id) => document.getElementById(id);
const ui = {
  call: $("call"), status: $("status"), transcript: $("transcript"),
  turns: document.querySelector("#turns tbody"), summary: $("summary"),
  remote: $("remote"), micLevel: $("mic-level"), agentLevel: $("agent-level"),
};

// What tests (and curious people) read: window.rejoinder.
const state = {
  state: "idle",      // idle | connecting | connected | ended | failed
  callId: null,
  error: null,
  raw: RAW,
  events: [],         // every server event, with "at": page time (ms) of arrival
  turns: [],          // one record per turn, in turn order (see turnRecord)
  latencies: [],      // {turn, ms, eos, onset}: page-measured voice-to-voice latency
  onsets: [],         // every agent onset the worklet reported, used or not
};
window.rejoinder = state;

let call = null;      // the live call: {pc, channel, mic, ctx, meter, onsetsPending}

// -- the call -----------------------------------------------------------------------------

ui.call.addEventListener("click", () => {
  if (call) hangUp("call ended");
  else placeCall();
});

async function placeCall() {
  resetCall();
  const c = { pc: null, channel: null, mic: null, ctx: null, meter: null, onsetsPending: [],
              jitter: null };
  call = c;
  setState("connecting", "connecting…");
  try {
    // The AudioContext is created inside the click so it is allowed to run.
    c.ctx = new AudioContext({ latencyHint: "interactive" });
    c.mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: !RAW, noiseSuppression: !RAW, autoGainControl: !RAW },
    }).catch((err) => {
      throw new Error(`microphone unavailable: ${err.message || err.name}`);
    });
    if (call !== c) {  // hung up meanwhile
      for (const t of c.mic.getTracks()) t.stop();
      return;
    }
    c.meter = await startMeter(c.ctx, c.mic);

    const pc = new RTCPeerConnection({ iceServers: [] });
    c.pc = pc;
    for (const track of c.mic.getAudioTracks()) pc.addTrack(track, c.mic);
    // Before the offer, so the offer negotiates SCTP.
    c.channel = pc.createDataChannel("events", { ordered: true });
    c.channel.onmessage = (m) => onServerMessage(m.data);
    c.channel.onclose = () => {
      if (call === c && state.state === "connected") hangUp("the server ended the call");
    };
    pc.ontrack = (e) => onRemoteTrack(c, e);
    pc.onicecandidate = (e) => console.debug("[rejoinder] local ICE candidate",
                                             e.candidate ? e.candidate.candidate : "(end)");
    pc.oniceconnectionstatechange = () =>
      console.debug("[rejoinder] ice", pc.iceConnectionState);
    pc.onconnectionstatechange = () => onConnectionState(c);

    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc, 3000);
    if (call !== c) return;
    const answer = await postOffer(pc.localDescription.sdp);
    if (call !== c) return;
    state.callId = answer.call_id || null;
    console.debug("[rejoinder] answer for call", state.callId, "\n" + answer.sdp);
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  } catch (err) {
    if (call === c) fail(err);  // else: hung up meanwhile; nothing to report
  }
}

function iceGatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    // Without STUN there is nothing slow to gather; go with what we have if it stalls.
    const timer = setTimeout(() => {
      console.warn("[rejoinder] ICE gathering still", pc.iceGatheringState,
                   "after", timeoutMs, "ms");
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    }, timeoutMs);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

// With [server] call_key set, the page is opened as /?call_token=<exp>.<signature>
// (minted by the embedding site's back end) and passes the token on with its offer.
function callTokenHeader() {
  const token = params.get("call_token");
  return token ? { "X-Rejoinder-Call-Token": token } : {};
}

async function postOffer(sdp) {
  let resp;
  try {
    resp = await fetch("/api/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...callTokenHeader() },
      body: JSON.stringify({ sdp, type: "offer" }),
    });
  } catch (err) {
    throw new Error(`cannot reach the server: ${err.message}`);
  }
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON: reported below */ }
  if (!resp.ok) {
    const why = body && body.error ? body.error : `HTTP ${resp.status}`;
    throw new Error(`the server refused the call: ${why}`);
  }
  if (!body || typeof body.sdp !== "string") throw new Error("the server sent no SDP answer");
  return body;
}

function onConnectionState(c) {
  const s = c.pc.connectionState;
  console.debug("[rejoinder] connection", s);
  if (call !== c) return;
  if (s === "connected") {
    setState("connected", `connected${state.callId ? ` (call ${state.callId})` : ""}`);
  } else if (s === "disconnected") {
    setStatus("connection interrupted; waiting for it to come back…");
  } else if (s === "failed") {
    fail(new Error("the connection to the server failed"));
  }
}

function onRemoteTrack(c, e) {
  if (e.track.kind !== "audio" || call !== c) return;
  const stream = e.streams[0] || new MediaStream([e.track]);
  // Chromium feeds a remote WebRTC track to Web Audio only while a media element plays
  // it; without this element the analyser would hear silence.
  ui.remote.srcObject = stream;
  ui.remote.play().catch((err) => console.warn("[rejoinder] audio element:", err.message));
  c.meter.attachAgent(stream);
}

function hangUp(message) {
  const c = call;
  call = null;
  if (c) {
    if (c.channel) c.channel.onclose = null;
    if (c.pc) { c.pc.onconnectionstatechange = null; c.pc.close(); }
    if (c.mic) for (const t of c.mic.getTracks()) t.stop();
    if (c.ctx) c.ctx.close().catch(() => {});
  }
  ui.remote.srcObject = null;
  ui.micLevel.style.width = ui.agentLevel.style.width = "0";
  if (state.state !== "failed") setState("ended", message);
  renderButton();
}

function fail(err) {
  console.error("[rejoinder]", err);
  state.error = err.message || String(err);
  hangUp(state.error);
  setState("failed", state.error, true);
}

function resetCall() {
  Object.assign(state, { callId: null, error: null, events: [], turns: [], latencies: [],
                         onsets: [] });
  ui.transcript.replaceChildren();
  ui.turns.replaceChildren();
  ui.summary.textContent = "";
}

// -- server events --------------------------------------------------------------------------

function onServerMessage(data) {
  let ev;
  try { ev = JSON.parse(data); } catch { return; }
  if (!ev || typeof ev !== "object") return;
  ev.at = performance.now();
  state.events.push(ev);
  if (typeof ev.turn !== "number") return;
  const t = turnRecord(ev.turn);
  switch (ev.type) {
    case "user":
      t.user = String(ev.text);
      t.userAt = ev.at;
      claimPendingOnset(t);
      break;
    case "agent":
      t.agent.push(String(ev.text));
      // A turn the agent speaks without a caller utterance (a greeting) has no latency;
      // its onset must not be handed to the next turn.
      if (t.user === null && call) call.onsetsPending.length = 0;
      break;
    case "interrupted":
      t.interrupted = true;
      t.heard = String(ev.heard || "");
      break;
    case "error":
      t.error = String(ev.message);
      break;
    case "tool":
      onToolEvent(t, ev);
      break;
    case "trace":
      t.trace = ev.ms_after_speech_end || {};
      t.outcome = ev.outcome || null;
      break;
    default:
      return;
  }
  render(t);
}

function turnRecord(n) {
  let t = state.turns.find((x) => x.turn === n);
  if (!t) {
    t = { turn: n, user: null, userAt: null, agent: [], interrupted: false, heard: null,
          error: null, trace: null, outcome: null, latencyMs: null, onset: null, eos: null,
          jitterBufferMs: null, tools: [] };
    state.turns.push(t);
    state.turns.sort((a, b) => a.turn - b.turn);
  }
  return t;
}

// A tool call as it happens: "started", then "ok", "error" or "timeout" (names and timings
// only; arguments and results never reach the page).
function onToolEvent(t, ev) {
  const name = String(ev.name || "tool");
  const status = String(ev.status || "");
  const running = t.tools.find((c) => c.name === name && c.status === "started");
  const c = running && status !== "started" ? running : { name, status, ms: null, prefetched: false };
  if (c !== running) t.tools.push(c);
  c.status = status;
  if (typeof ev.ms === "number") c.ms = ev.ms;
  c.prefetched = c.prefetched || ev.prefetched === true;
}

// -- latency ----------------------------------------------------------------------------------

// An agent onset (context seconds), with the caller's end of speech before it.
function onAgentOnset(c, o) {
  state.onsets.push(o);
  if (o.eos === null || o.callerSpeaking) return;  // not a reply to a finished utterance
  const latest = latestUserTurn();
  // The "user" event of the utterance this onset answers comes after its end of speech
  // (the server needs end_silence_s to decide); a later end of speech is a later turn.
  if (latest && latest.latencyMs === null && c.meter.toPageTime(o.eos) < latest.userAt) {
    assignLatency(latest, o);
  } else {
    // The audio outran the "user" event of its turn (or it is a later burst of a turn
    // already measured: then the caller speaks before the next "user" event, and the
    // pending onset goes stale below).
    c.onsetsPending.push(o);
  }
}

function claimPendingOnset(t) {
  if (!call || t.latencyMs !== null) return;
  const pending = call.onsetsPending;
  call.onsetsPending = [];
  // Only an onset after the caller's last speech answers this utterance.
  const o = pending.find((p) => lastMicSpeech() <= p.onset);
  if (o) assignLatency(t, o);
}

function latestUserTurn() {
  for (let i = state.turns.length - 1; i >= 0; i--) {
    if (state.turns[i].user !== null) return state.turns[i];
  }
  return null;
}

function lastMicSpeech() {
  return call && call.meter ? call.meter.eos : -Infinity;
}

function assignLatency(t, o) {
  t.onset = o.onset;
  t.eos = o.eos;
  t.latencyMs = Math.round((o.onset - o.eos) * 10000) / 10;  // 0.1 ms
  state.latencies.push({ turn: t.turn, ms: t.latencyMs, eos: o.eos, onset: o.onset });
  render(t);
  renderSummary();
  if (call) {
    postMeasured(call, t);
    sampleJitterBuffer(call, t);
  }
}

// The server keeps the caller's own measurement with the turn's record and in its metrics
// (rejoinder_caller_v2v_ms).
function postMeasured(c, t) {
  if (!c.channel || c.channel.readyState !== "open") return;
  c.channel.send(JSON.stringify({ type: "measured", turn: t.turn, v2v_ms: t.latencyMs }));
}

// The browser's own share of "network + playout": the average delay of its jitter buffer
// since the previous sample (WebRTC stats, inbound audio).
async function sampleJitterBuffer(c, t) {
  let stats;
  try { stats = await c.pc.getStats(); } catch { return; }
  for (const r of stats.values()) {
    if (r.type !== "inbound-rtp" || r.kind !== "audio" || !r.jitterBufferEmittedCount) continue;
    const prev = c.jitter || { delay: 0, count: 0 };
    const count = r.jitterBufferEmittedCount - prev.count;
    if (count > 0) {
      t.jitterBufferMs = Math.round(((r.jitterBufferDelay - prev.delay) / count) * 1000);
    }
    c.jitter = { delay: r.jitterBufferDelay, count: r.jitterBufferEmittedCount };
    render(t);
  }
}

// The AudioWorklet: runs on the audio thread, one instance with two inputs (0: mic,
// 1: agent). Its source is this function's text; it posts {type: "onset"} and, 20 times a
// second, {type: "levels"}.
function levelProcessorModule() {
  class LevelProcessor extends AudioWorkletProcessor {
    constructor(options) {
      super();
      const o = options.processorOptions;
      this.micPower = Math.pow(10, o.micDbfs / 10);  // mean square of a -N dBFS window
      this.agentAmp = o.agentAmp;
      this.quietFrames = Math.round((o.agentQuietMs / 1000) * sampleRate);
      this.win = Math.round(sampleRate / 100);       // 10 ms windows
      this.micSum = 0; this.micN = 0; this.micLoud = false; this.eos = null;
      this.agentSum = 0; this.agentN = 0; this.agentLast = -Infinity;
      this.micPeak = 0; this.agentPeak = 0;
      this.levelEvery = Math.round(sampleRate / 20); this.sinceLevel = 0;
    }

    process(inputs) {
      const mic = inputs[0] && inputs[0][0];
      const agent = inputs[1] && inputs[1][0];
      const n = (mic || agent || []).length;
      const f0 = currentFrame;
      for (let i = 0; i < n; i++) {
        if (mic) {
          const s = mic[i];
          this.micSum += s * s;
          if (++this.micN === this.win) {
            const power = this.micSum / this.win;
            this.micLoud = power > this.micPower;
            if (this.micLoud) this.eos = (f0 + i + 1) / sampleRate;  // end of this window
            if (power > this.micPeak) this.micPeak = power;
            this.micSum = 0; this.micN = 0;
          }
        }
        if (agent) {
          const s = agent[i];
          this.agentSum += s * s;
          if (++this.agentN === this.win) {
            const power = this.agentSum / this.win;
            if (power > this.agentPeak) this.agentPeak = power;
            this.agentSum = 0; this.agentN = 0;
          }
          if (s >= this.agentAmp || s <= -this.agentAmp) {
            const f = f0 + i;
            if (f - this.agentLast >= this.quietFrames) {
              this.port.postMessage({ type: "onset", onset: f / sampleRate, eos: this.eos,
                                      callerSpeaking: this.micLoud });
            }
            this.agentLast = f;
          }
        }
      }
      this.sinceLevel += n;
      if (this.sinceLevel >= this.levelEvery) {
        const db = (p) => (p > 0 ? 10 * Math.log10(p) : -120);
        this.port.postMessage({ type: "levels", mic: db(this.micPeak), agent: db(this.agentPeak),
                                eos: this.eos });
        this.micPeak = this.agentPeak = 0; this.sinceLevel = 0;
      }
      return true;
    }
  }
  registerProcessor("rejoinder-levels", LevelProcessor);
}

async function startMeter(ctx, micStream) {
  const src = `(${levelProcessorModule.toString()})();`;
  const url = URL.createObjectURL(new Blob([src], { type: "application/javascript" }));
  try {
    await ctx.audioWorklet.addModule(url);
  } finally {
    URL.revokeObjectURL(url);
  }
  const node = new AudioWorkletNode(ctx, "rejoinder-levels", {
    numberOfInputs: 2, numberOfOutputs: 1, outputChannelCount: [1],
    channelCount: 1, channelCountMode: "explicit", channelInterpretation: "speakers",
    processorOptions: { micDbfs: MIC_DBFS, agentAmp: AGENT_AMP, agentQuietMs: AGENT_QUIET_MS },
  });
  // The output stays silent; connecting it keeps the node pulled by the render loop.
  node.connect(ctx.destination);
  const highpass = new BiquadFilterNode(ctx, { type: "highpass", frequency: MIC_HIGHPASS_HZ,
                                                Q: Math.SQRT1_2 });  // < 1 ms delay above 300 Hz
  ctx.createMediaStreamSource(micStream).connect(highpass).connect(node, 0, 0);
  if (ctx.state === "suspended") await ctx.resume();
  const meter = {
    eos: -Infinity,
    attachAgent(stream) { ctx.createMediaStreamSource(stream).connect(node, 0, 1); },
    // Page time (performance.now() ms) of a context time; good to a render quantum or so.
    toPageTime(t) { return performance.now() - (ctx.currentTime - t) * 1000; },
  };
  node.port.onmessage = (m) => {
    const d = m.data;
    if (d.eos !== null && d.eos !== undefined) meter.eos = Math.max(meter.eos, d.eos);
    if (d.type === "onset" && call && call.meter === meter) onAgentOnset(call, d);
    else if (d.type === "levels") showLevels(d.mic, d.agent);
  };
  return meter;
}

function showLevels(micDb, agentDb) {
  const pct = (db) => `${Math.max(0, Math.min(100, ((db + 70) / 70) * 100)).toFixed(0)}%`;
  ui.micLevel.style.width = pct(micDb);
  ui.agentLevel.style.width = pct(agentDb);
}

// -- rendering ------------------------------------------------------------------------------

function setState(s, message, isError = false) {
  state.state = s;
  setStatus(message, isError);
  renderButton();
}

function setStatus(message, isError = false) {
  ui.status.textContent = message;
  ui.status.className = isError ? "error" : state.state === "connected" ? "live" : "";
}

function renderButton() {
  const live = call !== null;
  ui.call.textContent = live ? "Hang up" : "Call";
  ui.call.classList.toggle("hangup", live);
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function render(t) {
  renderTranscript(t);
  renderRow(t);
}

function renderTranscript(t) {
  const lines = [];
  if (t.user !== null) {
    // Abandoned: the caller went on before hearing a reply; the next turn answers it all.
    const wentOn = t.outcome === "abandoned";
    lines.push(el("li", { class: `line you${wentOn ? " abandoned" : ""}`, "data-turn": t.turn },
                  el("span", { class: "who" }, "you"), el("span", { class: "text" }, t.user),
                  wentOn ? el("span", { class: "note" }, "(you went on)") : null));
  }
  for (const c of t.tools) {
    const done = { ok: "done", error: "failed", timeout: "timed out" }[c.status] || "running…";
    const ms = c.ms === null ? "" : ` in ${c.ms.toFixed(0)} ms`;
    lines.push(el("li", { class: `line tool ${c.status}`, "data-turn": t.turn },
                  el("span", { class: "who" }, "tool"), el("span", { class: "text" }, c.name),
                  el("span", { class: "note" }, `${done}${ms}${c.prefetched ? ", prefetched" : ""}`)));
  }
  if (t.agent.length || t.interrupted) {
    const text = el("span", { class: "text" });
    if (t.interrupted) {
      // What was heard in plain, the rest struck through (when the words line up: the
      // "agent" event of a clause cut during synthesis may never have been sent).
      const said = t.agent.join(" ").split(/\s+/).filter(Boolean);
      const heard = (t.heard || "").split(/\s+/).filter(Boolean);
      const rest = heard.every((w, i) => said[i] === w) ? said.slice(heard.length) : [];
      text.append(el("span", { class: "heard" }, heard.join(" ")));
      if (rest.length) text.append(" ", el("s", { class: "unheard" }, rest.join(" ")));
    } else {
      text.append(t.agent.join(" "));
    }
    lines.push(el("li", { class: `line agent${t.interrupted ? " interrupted" : ""}`,
                          "data-turn": t.turn },
                  el("span", { class: "who" }, "agent"), text,
                  t.interrupted ? el("span", { class: "note" }, "interrupted") : null));
  }
  if (t.error !== null) {
    lines.push(el("li", { class: "line error", "data-turn": t.turn },
                  el("span", { class: "who" }, "error"), el("span", { class: "text" }, t.error)));
  }
  const old = ui.transcript.querySelectorAll(`li[data-turn="${t.turn}"]`);
  if (old.length) {
    old[0].before(...lines);
    for (const o of old) o.remove();
  } else {
    // Turns arrive in order, but be safe: insert before the first later turn.
    const later = [...ui.transcript.children].find((li) => Number(li.dataset.turn) > t.turn);
    if (later) later.before(...lines);
    else ui.transcript.append(...lines);
  }
}

function renderRow(t) {
  const ms = (v) => (typeof v === "number" ? v.toFixed(0) : "–");
  const trace = t.trace || {};
  const sent = trace.first_audio_sent;
  const row = el("tr", { "data-turn": t.turn },
    el("td", {}, String(t.turn)),
    el("td", { class: "outcome" }, t.outcome || (t.interrupted ? "interrupted" : "…")),
    el("td", { class: "v2v" }, t.latencyMs === null ? "–" : `${t.latencyMs.toFixed(0)} ms`),
    ...STAGES.map((s) => el("td", { class: `stage ${s}` }, ms(trace[s]))),
    el("td", t.jitterBufferMs === null ? { class: "delta" }
             : { class: "delta", title: `browser jitter buffer: ${t.jitterBufferMs} ms` },
       t.latencyMs !== null && typeof sent === "number" ? ms(t.latencyMs - sent) : "–"),
  );
  const old = ui.turns.querySelector(`tr[data-turn="${t.turn}"]`);
  if (old) old.replaceWith(row);
  else {
    const later = [...ui.turns.children].find((r) => Number(r.dataset.turn) > t.turn);
    if (later) later.before(row);
    else ui.turns.append(row);
  }
}

function renderSummary() {
  const v = state.latencies.map((l) => l.ms).sort((a, b) => a - b);
  if (!v.length) { ui.summary.textContent = ""; return; }
  const q = (p) => v[Math.min(v.length - 1, Math.ceil((p / 100) * v.length) - 1)];
  const max = v[v.length - 1];
  ui.summary.textContent = `voice-to-voice over ${v.length} turn${v.length > 1 ? "s" : ""}: ` +
    `median ${q(50).toFixed(0)} ms, p95 ${q(95).toFixed(0)} ms, max ${max.toFixed(0)} ms`;
}

renderButton();
