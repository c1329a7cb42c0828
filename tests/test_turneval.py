"""The offline end-of-turn evaluator (bench/turneval.py): its replay of the engine's policy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rejoinder.bench.turneval import (
    Confirmation,
    _score,
    confirmations,
    credit_quiet_tails,
    evaluate,
)
from rejoinder.bench.turnset import Silence, TurnItem, build, load
from rejoinder.client.measure import find_utterances
from rejoinder.core.audio import read_wav
from rejoinder.turn.options import TurnOptions

OPTS = TurnOptions(model_after_s=0.1, reask_s=0.0, finished_silence_s=0.0)  # asked once
SILENCE = TurnOptions(model="none")
LATENCY = 0.11  # 1760 samples
S = 16_000  # samples per second; frames are 320 samples (20 ms)


def flags(*runs: tuple[bool, float]) -> list[bool]:
    """Per-frame speech flags from (speech, seconds) runs."""
    return [speech for speech, seconds in runs for _ in range(round(seconds * 50))]


class FakeModel:
    def __init__(self, p: float) -> None:
        self.p = p
        self.asked: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int) -> float:
        self.asked.append((start, end))
        return self.p


# 1 s of speech, a 500 ms pause, 1 s of speech, the 1.5 s end.
PAUSED = flags((True, 1.0), (False, 0.5), (True, 1.0), (False, 1.5))


def test_model_holds_a_pause_that_silence_alone_cuts_off() -> None:
    model = FakeModel(0.2)
    found = confirmations(PAUSED, OPTS, model, latency_s=LATENCY)
    # P < hold_p: nothing in the pause; the end at max_silence_s after the last voiced frame.
    assert found == [Confirmation(at=40_000 + S, last_voiced=40_000, p=0.2)]
    assert model.asked == [(0, 17_600), (0, 41_600)]  # asked at each pause, pause_s in

    silence = confirmations(PAUSED, SILENCE, None, latency_s=LATENCY)
    assert silence == [Confirmation(at=16_000 + 4_800, last_voiced=16_000, p=None, resumed=24_000),
                       Confirmation(at=40_000 + 4_800, last_voiced=40_000, p=None)]

    item = TurnItem("x.wav", "espeak-ng en-us 165 wpm hesitation", "",
                    [Silence("pause", 1.0, 1.5), Silence("end", 2.5, 4.0)])
    scored = _score(item, silence)
    assert (scored["group"], scored["cutoffs"], scored["pauses_cut"]) == ("espeak-hesitation", 1, 1)
    assert scored["cuts"] == [{"at_s": 1.3, "pause": 0, "p": None, "heard": True}]
    # The caller goes on 200 ms after the cut-off: within take_back_s = 0.25, they take the
    # turn back; with 0.15 they heard the agent (if its audio started at once).
    assert (_score(item, silence, 0.25)["cut_off_heard"],
            _score(item, silence, 0.15)["cut_off_heard"]) == (False, True)
    assert scored["end"] == {"at_s": 2.8, "delay_ms": pytest.approx(300.0), "vad_lag_ms": 0.0,
                             "p": None}
    assert _score(item, found)["cutoffs"] == 0


def test_a_sure_model_confirms_when_it_answers() -> None:
    end = flags((True, 1.0), (False, 1.5))
    # P >= confirm_p: pause_s + latency after the last voiced frame.
    assert confirmations(end, OPTS, FakeModel(0.95), latency_s=LATENCY) == [
        Confirmation(at=16_000 + 1_600 + 1_760, last_voiced=16_000, p=0.95)]
    # hold_p <= P < confirm_p: end_silence_s, or the answer if that comes later.
    assert confirmations(end, OPTS, FakeModel(0.6), latency_s=LATENCY) == [
        Confirmation(at=16_000 + 4_800, last_voiced=16_000, p=0.6)]
    assert confirmations(end, OPTS, FakeModel(0.6), latency_s=0.25) == [
        Confirmation(at=16_000 + 1_600 + 4_000, last_voiced=16_000, p=0.6)]
    assert confirmations(end, OPTS, FakeModel(0.2), latency_s=LATENCY) == [
        Confirmation(at=16_000 + S, last_voiced=16_000, p=0.2)]


def test_a_held_turn_is_asked_again_every_reask_s() -> None:
    end = flags((True, 1.0), (False, 1.5))
    answers = iter([0.2, 0.3, 0.95])
    asked: list[int] = []

    def model(start: int, stop: int) -> float:
        asked.append(stop)
        return next(answers)

    found = confirmations(end, replace(OPTS, reask_s=0.2), model, latency_s=LATENCY)
    # Asked at 100, 300 and 500 ms of silence; the third answer (0.95) confirms at once.
    assert asked == [16_000 + 1_600, 16_000 + 4_800, 16_000 + 8_000]
    assert found == [Confirmation(at=16_000 + 8_000 + 1_760, last_voiced=16_000, p=0.95)]
    # Without reask_s: one question, and P 0.2 holds the turn to max_silence_s.
    assert confirmations(end, OPTS, FakeModel(0.2), latency_s=LATENCY)[0].at == 16_000 + S


def test_the_model_is_asked_after_model_after_s_of_silence() -> None:
    end = flags((True, 1.0), (False, 1.5))
    model = FakeModel(0.95)
    later = TurnOptions(model_after_s=0.2)
    assert confirmations(end, later, model, latency_s=LATENCY) == [
        Confirmation(at=16_000 + 3_200 + 1_760, last_voiced=16_000, p=0.95)]
    assert model.asked == [(0, 16_000 + 3_200)]


def test_quiet_frames_after_audible_speech_are_silence_up_to_the_cap() -> None:
    vad = [True, True, False, True, True, True, False, True, True, False]
    loud = [False, True, False, False, True, False, False, False, False, False]
    # Frame 0 is quiet but nothing audible came before it: speech. Frame 3 is quiet after
    # an audible one: silence. Frame 5 too; frames 7-8 are two quiet frames in a row:
    # the first is silence, the second, over the cap (1), is quiet speech.
    assert credit_quiet_tails(vad, loud, 1) == [True, True, False, False, True, False,
                                                False, False, True, False]
    assert credit_quiet_tails(vad, loud, 0) == vad


def test_speech_before_the_confirmation_cancels_it() -> None:
    model = FakeModel(0.95)
    # A 200 ms pause: the model would answer 210 ms in, but the caller goes on at 200 ms.
    speech = flags((True, 1.0), (False, 0.2), (True, 0.5), (False, 1.5))
    assert confirmations(speech, OPTS, model, latency_s=LATENCY) == [
        Confirmation(at=27_200 + 3_360, last_voiced=27_200, p=0.95)]
    assert model.asked == [(0, 17_600), (0, 28_800)]  # asked again at the next pause
    assert confirmations(speech, SILENCE, None, latency_s=LATENCY) == [
        Confirmation(at=27_200 + 4_800, last_voiced=27_200, p=None)]


def test_words_hold_a_pause_the_model_would_cut_off() -> None:
    model = FakeModel(0.95)
    heard: list[tuple[int, int]] = []

    def words(start: int, end: int) -> bool:  # "I'd like a table for", then "... two."
        heard.append((start, end))
        return end < 24_000

    assert confirmations(PAUSED, OPTS, model, latency_s=LATENCY)[0] == Confirmation(
        at=17_600 + 1_760, last_voiced=16_000, p=0.95, resumed=24_000)  # cut off
    found = confirmations(PAUSED, OPTS, model, latency_s=LATENCY, words=words,
                          words_latency_s=0.25)
    # The first pause trails off: held. At the end the model answers at 43_360 and the
    # words, finished, at 41_600 + 4_000: the turn is confirmed when the later one is in.
    assert found == [Confirmation(at=45_600, last_voiced=40_000, p=0.95)]
    assert heard == [(0, 17_600), (0, 41_600)]  # transcribed at each pause
    off = replace(OPTS, hold_unfinished=False)
    assert confirmations(PAUSED, off, model, latency_s=LATENCY, words=words,
                         words_latency_s=0.25)[0].at == 17_600 + 1_760


def test_finished_words_end_a_held_turn_at_finished_silence_s() -> None:
    model = FakeModel(0.2)  # "not yet": alone, only max_silence_s (1 s) ends the turn
    opts = replace(OPTS, finished_silence_s=0.7)
    found = confirmations(PAUSED, opts, model, latency_s=LATENCY,
                          words=lambda start, end: False, words_latency_s=0.25)
    # The 500 ms pause is shorter than 0.7 s; the end comes 0.7 s after the last voice.
    assert found == [Confirmation(at=40_000 + 11_200, last_voiced=40_000, p=0.2)]


def test_a_click_is_not_a_turn_and_the_preroll_starts_after_it() -> None:
    model = FakeModel(0.95)
    speech = flags((False, 1.0), (True, 0.06), (False, 0.44), (True, 1.0), (False, 1.5))
    found = confirmations(speech, OPTS, model, latency_s=LATENCY)
    assert found == [Confirmation(at=40_000 + 3_360, last_voiced=40_000, p=0.95)]
    # The click closed at 21_760 (end_silence_s after it); 200 ms of pre-roll would be 20_800.
    assert model.asked == [(21_760, 41_600)]


@pytest.mark.slow
def test_a_recorded_turn_ends_where_the_bench_caller_hears_its_speech_end(tmp_path: Path
                                                                         ) -> None:
    """The end mark is the caller's own end of speech (client.measure), not the end of the
    low rumble some recordings trail off in: goforward's was 400 ms late by its level."""
    manifest = build(tmp_path, espeak=False)
    items = load(manifest)
    assert len(items) == 17
    for item in items:
        [end] = [s for s in item.silences if s.kind == "end"]
        heard = find_utterances(read_wav(tmp_path / item.file), S)[-1].end_s
        assert heard == pytest.approx(end.start_s, abs=0.0101), item.file


def test_evaluate_on_the_recorded_turns(tmp_path: Path) -> None:
    manifest = build(tmp_path, espeak=False)
    model, patient = evaluate(manifest, [OPTS, replace(OPTS, max_silence_s=2.0)],
                              use_model=True, model_latency_s=LATENCY)
    [silence] = evaluate(manifest, replace(SILENCE, hold_unfinished=False), use_model=False,
                         model_latency_s=LATENCY)
    assert model["policy"] == "smart-turn+words" and silence["policy"] == "silence-only"
    # A swept policy reuses the answers; waiting longer cannot cut off more or end sooner.
    assert patient["policy"] == "smart-turn+words max_silence_s=2.0"
    assert patient["overall"]["cutoffs"] <= model["overall"]["cutoffs"]
    ends = [(a["end"], b["end"]) for a, b in zip(model["items"], patient["items"], strict=True)]
    assert all(b is None or (a is not None and b["at_s"] >= a["at_s"]) for a, b in ends)
    assert any(b is None or b["at_s"] > a["at_s"] for a, b in ends if a is not None)
    said = [s for item in model["items"] for s in item["said"]]
    assert len(said) >= 17 and any(s["text"] for s in said)  # a transcript at every pause
    assert model["overall"]["transcripts"] == len(said)
    assert all(not item["said"] for item in silence["items"])
    assert set(model["by_source"]) == {"librivox", "pocketsphinx"}
    assert model["predict_calls"] > 0 and model["predict_ms_mean"] > 0
    assert silence["predict_calls"] == 0 and silence["predict_ms_mean"] is None
    for report in (model, silence):
        overall = report["overall"]
        assert overall["items"] == len(report["items"]) == 17
        assert overall["items_with_pause"] == 8 and overall["pauses"] >= 8
        assert set(overall["delay_ms"]) == {"mean", "p50", "p95"}
        assert overall["ends"] + overall["missed_ends"] == 17
    # 400-700 ms pauses are longer than end_silence_s: silence alone cuts off every item with
    # one. Not quite every pause inside it: the VAD's lag (~60-130 ms) can push the
    # confirmation just past a ~400 ms pause (a cut-off in speech), and it hears a blip of
    # the room noise in one LibriVox pause (15 of the 17 were cut inside the pause).
    assert silence["overall"]["cut_off_rate"] == 1.0
    assert silence["overall"]["pauses_cut"] >= 0.8 * silence["overall"]["pauses"]
    assert silence["overall"]["missed_ends"] == 0
