"""The bench's own arithmetic on synthetic data, and a short real run against the profile."""

from __future__ import annotations

import numpy as np
import pytest

from rejoinder.bench.caller import BURST_GAP_S, CallRecord, SpokenTurn
from rejoinder.bench.measure import barge_in_ms, ideal_ms, turns_of
from rejoinder.bench.scripts import load_script, splice_pause


def test_ideal_path_counts_tokens_up_to_the_end_of_the_first_clause():
    # "Sure, I can help with that." is the first clause (6 words): ttft + 5 tokens.
    reply = "Sure, I can help with that. Let me check the details for you now."
    assert ideal_ms(0.3, 0.15, 0.25, 50.0, reply, 0.1) == pytest.approx(
        1000 * (0.3 + 0.15 + 0.25 + 5 / 50 + 0.1))
    # A long opening phrase is cut at its comma once it has 3 words.
    assert ideal_ms(0.0, 0.0, 0.0, 10.0, "Well I think, maybe not.", 0.0) == pytest.approx(200)
    # Speculating from the pause: the work starts 100 ms into the silence, and the audio
    # waits for the turn to end if it is ready sooner.
    assert ideal_ms(0.3, 0.15, 0.25, 50.0, reply, 0.1, pause_s=0.1) == pytest.approx(
        1000 * (0.1 + 0.15 + 0.25 + 5 / 50 + 0.1))
    assert ideal_ms(0.3, 0.0, 0.05, 50.0, "Hi.", 0.0, pause_s=0.1) == pytest.approx(300)


def _bursts(*spans, rate=1000.0):
    """Loud-sample times for bursts of agent audio (start, end) in seconds."""
    return np.concatenate([np.arange(a, b, 1 / rate) for a, b in spans])


def test_turn_numbers_from_a_synthetic_call():
    loud = _bursts((2.5, 4.0), (6.8, 7.3), (7.9, 9.0), (11.2, 12.0))
    record = CallRecord(
        call_id="c", wall_offset=1000.0, events=[],
        turns=[SpokenTurn(1, 0.5, 2.0, False),   # answered at 2.5: 500 ms
               SpokenTurn(2, 5.0, 7.5, False),   # agent talked at 6.8, mid-utterance: cut off
               SpokenTurn(3, 8.3, 9.5, True),    # talks over the 7.9-9.0 reply: barge-in
               SpokenTurn(4, 10.0, 10.5, False)],  # answered at 11.2: 700 ms
        loud=loud,
        traces=[{"type": "trace", "turn": 7, "outcome": "completed",
                 "speech_end_wall": 1002.04,
                 "ms_after_speech_end": {"speech_end": 0.0, "stt_final": 120.0}}])
    turns = turns_of(record, call=3, ideal=450.0)
    assert [t["v2v_ms"] for t in turns] == [500.0, 400.0, None, 700.0]
    assert [t["cut_off"] for t in turns] == [False, True, False, False]
    assert turns[0]["overhead_ms"] == 50.0 and turns[2]["overhead_ms"] is None
    # Caller speech at 8.3 s; the agent's last sample before going quiet: 8.999 s.
    assert turns[2]["barge_in_ms"] == pytest.approx(699.0, abs=0.5)
    assert [t["barge_in_ms"] for t in turns if not t["interrupt"]] == [None, None, None]
    # The server record joins the turn whose EoS is nearest (40 ms lag here).
    assert turns[0]["server"] == {"turn": 7, "outcome": "completed", "tts_cached": None,
                                  "stages": {"stt_final": 120.0}, "eos_lag_ms": 40.0}
    assert turns[1]["server"] is None
    # A first clause from the phrase cache has no TTS wait: its turn is held to that ideal.
    record.traces[0]["tts_cached"] = True
    turns = turns_of(record, call=3, ideal=450.0, ideal_cached=350.0)
    assert [t["ideal_ms"] for t in turns] == [350.0, 450.0, 450.0, 450.0]
    assert turns[0]["overhead_ms"] == 150.0


def test_barge_in_needs_agent_audio_to_interrupt():
    loud = _bursts((1.0, 2.0))
    assert barge_in_ms(loud, 3.0, 4.0) is None
    assert barge_in_ms(loud, 1.5, 2.5) == pytest.approx(499.0, abs=0.5)
    # The agent's last sound came just before the caller started: it had already stopped,
    # there is nothing to time (not a 0 ms barge-in).
    assert barge_in_ms(loud, 2.1, 3.0) is None


def test_backchannel_turns_report_whether_the_agent_kept_its_turn():
    # The agent talks 2.0-4.0 s, holds 4.3-4.6 s around an "mm-hm" said 4.2-4.5 s, goes on.
    loud = _bursts((2.0, 4.3), (4.6, 6.0), (9.0, 9.5))
    record = CallRecord(
        call_id="c", wall_offset=0.0, events=[], loud=loud, traces=[],
        turns=[SpokenTurn(1, 0.5, 1.5, False),
               SpokenTurn(2, 4.2, 4.5, True, backchannel=True),
               SpokenTurn(3, 7.0, 8.5, False)])
    first, mm, last = turns_of(record, call=1, ideal=None)
    assert mm["kept_turn"] is True and mm["v2v_ms"] is None and mm["replied"] is None
    assert mm["gap_ms"] == pytest.approx(300.0 - 1000 * BURST_GAP_S, abs=1.5)
    assert [first["v2v_ms"], last["v2v_ms"]] == [500.0, 500.0]
    # A server turn that starts at the noise means the agent took it as a turn.
    record.traces = [{"turn": 2, "outcome": "completed", "speech_end_wall": 4.55,
                      "ms_after_speech_end": {}}]
    assert turns_of(record, call=1, ideal=None)[1]["kept_turn"] is False


def test_barge_in_ends_at_the_last_agent_audio_before_the_caller_stops():
    # The agent pauses between clauses (2.0-2.3 s) just after the caller starts at 1.9 s,
    # then talks on over them until 3.0 s: it stopped at 3.0 s, not at 2.0 s.
    loud = _bursts((1.0, 2.0), (2.3, 3.0), (4.5, 5.0))
    assert barge_in_ms(loud, 1.9, 3.5) == pytest.approx(1100.0, abs=1.5)


def test_scripts_load_and_pauses_are_spliced_in_silence():
    names = ["backchannels", "calls12", "coldstart", "interrupts", "librivox", "pauses",
             "smoke"]
    scripts = {n: load_script(n) for n in names}
    assert [t.interrupt_after_s for t in scripts["interrupts"].turns][:2] == [None, 0.8]
    audio = np.ones(16000, dtype=np.int16) * 1000
    audio[8000:8160] = 0  # a quiet 10 ms spot near 0.5 s
    spliced = splice_pause(audio, 0.45, 0.5)
    assert len(spliced) == 16000 + 8000
    assert not spliced[8000:16000].any()  # the gap went into the quiet spot


@pytest.mark.slow
def test_smoke_bench_against_the_simulated_cloud(tmp_path):
    from rejoinder.bench.runner import BenchOptions, run, write_results

    results = run(BenchOptions(script=load_script("smoke"), stack="cloud", out=tmp_path),
                  progress=lambda line: None)
    paths = write_results(results, tmp_path)
    assert paths["html"].exists() and paths["json"].exists()
    (level,) = results["runs"]
    assert level["calls"] == {"started": 1, "refused": 0, "failed": 0, "completed": 1}
    turns = level["turns"]
    assert len(turns) == 3 and all(t["replied"] for t in turns)
    # What each side said, as the caller received it, for reading a run afterwards.
    said = level["said"]
    assert [s["who"] for s in said if s["who"] == "user"] == ["user"] * 3
    assert all(s["text"] for s in said) and {s["who"] for s in said} == {"user", "agent"}
    ideal = results["meta"]["ideal_ms"]
    assert ideal == pytest.approx(100 + 150 + 250 + 5 * 20 + 100)  # speculating at the pause
    # The same reply's first clause comes from the phrase cache after turn 1: no TTS wait.
    assert results["meta"]["ideal_cached_ms"] == pytest.approx(ideal - 100)
    assert [t["server"]["tts_cached"] for t in turns] == [False, True, True]
    for t in turns:
        cached = t["server"]["tts_cached"]
        assert t["ideal_ms"] == results["meta"]["ideal_cached_ms" if cached else "ideal_ms"]
        # Nobody beats the critical path; the rest is what the server and network add.
        assert t["ideal_ms"] < t["v2v_ms"] < t["ideal_ms"] + 400
        s = t["server"]["stages"]
        # The server's own trace shows the profile's latencies, each within ~50 ms.
        assert s["stt_final"] - s["vad_end"] == pytest.approx(150, abs=50)  # from the pause
        assert s["llm_first_token"] - s["stt_final"] == pytest.approx(250, abs=50)
        tts_ms = 0 if cached else 100
        assert s["tts_first_audio"] - s["first_clause"] == pytest.approx(tts_ms, abs=50)
        assert s["first_audio_sent"] < t["v2v_ms"]
