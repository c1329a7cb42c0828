"""Per-turn numbers from what a simulated caller observed (definitions: design.md).

- **voice-to-voice**: EoS to the first loud agent sample that arrives after it and
  starts a new burst, before the caller's next utterance begins.
- **cut off**: the agent began a new burst while the caller was still speaking.
- **barge-in** (scripted interruptions only): from the start of caller speech during
  agent audio to the last agent sample before the agent went quiet.
- **ideal critical path** with known provider latencies: the end-of-turn silence,
  then STT, LLM time to first token and to the end of the first clause, then TTS
  time to first audio, one after another. **Overhead** is measured minus ideal:
  the transport, the scheduling and everything else the server adds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rejoinder.bench.caller import BURST_GAP_S, CallRecord, SpokenTurn
from rejoinder.client.measure import onset_after
from rejoinder.turn.clauses import ClauseSplitter

JOIN_TOLERANCE_S = 1.0         # caller EoS vs the server's speech end, to join records
RESUME_WITHIN_S = 2.0          # after a backchannel, the agent's voice must be back by then


def ideal_ms(end_silence_s: float, stt_s: float, llm_ttft_s: float, tokens_per_s: float,
             reply: str, tts_ttfb_s: float, pause_s: float | None = None) -> float:
    """The critical path with zero orchestration cost, in ms.

    Without speculation (``pause_s`` None) the providers start when the turn ends, after
    ``end_silence_s``. With it they start at the pause, ``pause_s`` into the silence, and
    the audio plays when it is ready or when the turn ends, whichever is later.

    The first clause is ready when its last word has been generated; the LLM streams
    one word per token here (as the simulated providers do). Waiting for the next
    token to *see* that the clause ended is the splitter's cost, so it is overhead.
    """
    words = reply.split()
    splitter = ClauseSplitter()
    clause_words = len(words)
    for i, w in enumerate(words):
        done = splitter.push((" " if i else "") + w)
        if done:
            clause_words = len(done[0].split())
            break
    per_token = 0.0 if tokens_per_s <= 0 else 1.0 / tokens_per_s
    first_clause_s = llm_ttft_s + (clause_words - 1) * per_token
    work = stt_s + first_clause_s + tts_ttfb_s
    if pause_s is None:
        return 1000.0 * (end_silence_s + work)
    return 1000.0 * max(end_silence_s, pause_s + work)


def turns_of(record: CallRecord, call: int, ideal: float | None,
             ideal_cached: float | None = None) -> list[dict[str, Any]]:
    """The measured turns of one call. ``ideal``: the critical path with the providers'
    known latencies; ``ideal_cached``: the same when the reply's first clause comes from the
    phrase cache (no TTS wait), used for the turns whose server trace says so."""
    loud = record.loud
    out: list[dict[str, Any]] = []
    for i, t in enumerate(record.turns):
        nxt = record.turns[i + 1].start if i + 1 < len(record.turns) else math.inf
        server = _join(record.traces, t.eos + record.wall_offset)
        cached = server is not None and server.get("tts_cached") and ideal_cached is not None
        turn_ideal = ideal_cached if cached else ideal
        if server is not None and server.get("speech_end_wall") is not None:
            # How long after the caller's EoS the server saw the end of speech (uplink,
            # decoding, VAD lag); the rest of v2v - first_audio_sent is the downlink.
            lag = (server.pop("speech_end_wall") - t.eos - record.wall_offset) * 1000.0
            server["eos_lag_ms"] = round(lag, 1)
        row: dict[str, Any] = {
            "call": call, "turn": t.index, "call_id": record.call_id, "say": t.say,
            "interrupt": t.interrupt,
            "backchannel": t.backchannel, "ideal_ms": turn_ideal, "server": server,
            "barge_in_ms": None,
        }
        if t.backchannel:
            row.update(_backchannel(loud, t, nxt, server))
        else:
            onset = onset_after(loud, t.eos, until=nxt, quiet_s=BURST_GAP_S)
            v2v = None if onset is None else round((onset - t.eos) * 1000.0, 1)
            row.update({
                "v2v_ms": v2v, "replied": v2v is not None,
                "cut_off": onset_after(loud, t.start, until=t.eos,
                                       quiet_s=BURST_GAP_S) is not None,
                "barge_in_ms": barge_in_ms(loud, t.start, t.eos) if t.interrupt else None,
                "overhead_ms": (None if v2v is None or turn_ideal is None
                                else round(v2v - turn_ideal, 1)),
            })
        out.append(row)
    return out


def _backchannel(loud: np.ndarray, t: SpokenTurn, until: float,
                 server: dict[str, Any] | None) -> dict[str, Any]:
    """A listening noise said over the agent: did the agent keep its turn, and how long
    did its voice stop around the noise (0 if it talked straight through)?"""
    i = int(np.searchsorted(loud, t.start, side="left"))
    before = float(loud[i - 1]) if i > 0 else None
    j = int(np.searchsorted(loud, t.eos, side="left"))
    if j < loud.size and before is not None and loud[j] - t.eos <= RESUME_WITHIN_S:
        # The widest gap in the agent's audio from the noise's start to its first sample
        # after the noise.
        span = loud[i - 1:j + 1]
        gap = float(np.max(np.diff(span))) if span.size > 1 else 0.0
        gap_ms: float | None = round(max(0.0, gap - BURST_GAP_S) * 1000.0, 1)
    else:
        gap_ms = None
    kept = gap_ms is not None and server is None and loud[j] < until
    return {"v2v_ms": None, "replied": None, "cut_off": None, "overhead_ms": None,
            "kept_turn": bool(kept), "gap_ms": gap_ms}


def barge_in_ms(loud: np.ndarray, start: float, until: float) -> float | None:
    """Start of caller speech to the last agent sample heard before ``until`` (the end of
    the caller's interrupting utterance: the agent must be quiet by then).

    None if the agent was not audible when the caller started (nothing to interrupt), or
    if it made no sound from then on: it had already finished (or paused and never went
    on), so there is no barge-in to time; scoring that as 0 ms would flatter the figure.
    Taking the last sample before ``until``, not the end of the burst the caller started
    in, matters: a reply has gaps of its own (between clauses), and an agent that went
    quiet at one of them and then talked on over the caller has not stopped.
    """
    n = loud.size
    i = int(np.searchsorted(loud, start, side="left"))  # first loud sample at/after start
    audible = (i > 0 and start - loud[i - 1] <= BURST_GAP_S) or (
        i < n and loud[i] - start <= BURST_GAP_S)
    if not audible:
        return None
    j = int(np.searchsorted(loud, until, side="left")) - 1  # last loud sample before until
    if j < i:
        return None  # nothing heard at or after the caller's start
    return round((float(loud[j]) - start) * 1000.0, 1)


def _join(traces: list[dict[str, Any]], eos_wall: float) -> dict[str, Any] | None:
    """The server's record of the turn whose speech ended nearest this EoS."""
    best, best_d = None, JOIN_TOLERANCE_S
    for t in traces:
        wall = t.get("speech_end_wall")
        if isinstance(wall, (int, float)) and abs(wall - eos_wall) < best_d:
            best, best_d = t, abs(wall - eos_wall)
    if best is None:
        return None
    stages = dict(best.get("ms_after_speech_end") or {})
    stages.pop("speech_end", None)
    return {"turn": best.get("turn"), "outcome": best.get("outcome"), "stages": stages,
            "tts_cached": best.get("tts_cached"), "speech_end_wall": best.get("speech_end_wall")}
