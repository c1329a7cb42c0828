"""Speculation, the end-of-turn model and fillers, on virtual time with fake providers."""

from __future__ import annotations

import pytest

from rejoinder.core.audio import SAMPLE_RATE
from rejoinder.providers.base import BufferedSTTStream, ChatMessage
from rejoinder.testing import (
    FakeLLM,
    FakeSTT,
    FakeTTS,
    FakeTurnModel,
    Latency,
    fake_stack,
    run_virtual,
)
from rejoinder.testing.loopback import converse
from rejoinder.turn.options import TurnOptions

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731  float sums of 20 ms steps


def _longer_than(seconds, long, short):
    return lambda audio: long if len(audio) > seconds * SAMPLE_RATE else short


def test_caller_going_on_wastes_the_speculation_and_the_model_keeps_the_turn_open():
    # "I'd like..." (1 s), a 500 ms mid-sentence pause, "...a table" (1 s), then silence.
    stt = FakeSTT(_longer_than(2.0, "I'd like a table", "I'd like"), Latency(first_s=0.1))
    model = FakeTurnModel(_longer_than(2.0, 0.95, 0.2), Latency(first_s=0.05))
    llm = FakeLLM(["Got it."], Latency(first_s=0.2))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        return await converse(
            fake_stack(stt=stt, llm=llm, tts=tts, turn=model),
            [("silence", 0.5), ("speech", 1.0), ("silence", 0.5), ("speech", 1.0)],
            options=TurnOptions(reask_s=0.0))

    conv, ear, events = run_virtual(main())
    # At the first pause (1.6 s) the model said 0.2: the turn stays open (up to 1 s of
    # silence), and the speculative reply's audio, ready at 1.95 s, stays held. The caller
    # goes on at 2.0 s; 120 ms later the speculation is dropped.
    assert conv.stats == {"speculative_starts": 2, "wasted": 1, "commits": 1}
    assert len(model.asked) == 2
    # Second pause at 3.1 s; the model, asked at 3.16 s (model_after_s), answers 0.95 at
    # 3.21 s and that confirms the turn.
    (trace,) = conv.traces
    assert trace["speculation"] == "committed"
    ms = trace["ms_after_speech_end"]
    assert ms["vad_end"] == approx(100.0)
    assert ms["turn_confirmed"] == approx(210.0)
    assert ms["stt_final"] == approx(200.0)
    # STT 3.2 s, LLM 3.4 s, TTS 3.45 s: the first pull after that. Nothing was heard before.
    assert ear.first_loud_after(0) == approx(3.465)
    assert tts.spoken == ["Got it.", "Got it."]  # the wasted one was synthesised, never played
    assert conv.history == [ChatMessage("user", "I'd like a table"),
                            ChatMessage("assistant", "Got it.")]
    assert [e["text"] for e in events if e["type"] == "user"] == ["I'd like a table"]


@pytest.mark.parametrize(("p", "confirmed_ms"), [
    (0.95, 210.0),   # sure: confirmed when it answers (asked at 160 ms + 50 ms model)
    (0.7, 300.0),    # unsure: the silence timer decides
    (0.2, 1000.0),   # "mid-sentence": only max_silence_s ends the turn
])
def test_end_of_turn_model_moves_the_confirmation(p, confirmed_ms):
    model = FakeTurnModel(p, Latency(first_s=0.05))

    async def main():
        return await converse(fake_stack(turn=model), [("silence", 0.5), ("speech", 1.0)],
                              options=TurnOptions(reask_s=0.0, finished_silence_s=0.0))

    conv, ear, events = run_virtual(main())
    (trace,) = conv.traces
    assert trace["ms_after_speech_end"]["turn_confirmed"] == approx(confirmed_ms)
    # pre-roll, speech, model_after_s of silence
    assert model.asked == [round((0.2 + 1.0 + 0.16) * SAMPLE_RATE)]


@pytest.mark.parametrize(("words", "stt_s", "hold", "confirmed_ms"), [
    ("I'd like a table.", 0.1, True, 210.0),        # finished: the model's answer confirms
    ("I'd like a table for", 0.1, True, 1000.0),    # ends on "for": only max_silence_s
    ("I was wondering if...", 0.1, True, 1000.0),   # trails off
    ("Who are you with?", 0.1, True, 210.0),        # a question may end on a preposition
    ("I'd like a table for", 0.1, False, 210.0),    # the check switched off
    ("I'd like a table.", 0.33, True, 430.0),       # the model is sure; the words come later
    ("I'd like a table.", 0.33, False, 210.0),
])
def test_the_words_confirm_the_turn_too(words, stt_s, hold, confirmed_ms):
    # Speech ends at 1.5 s; the pause (100 ms) starts the speculative transcript, the model
    # answers 0.95 at 210 ms.
    stt = FakeSTT([words], Latency(first_s=stt_s))
    model = FakeTurnModel(0.95, Latency(first_s=0.05))

    async def main():
        return await converse(fake_stack(stt=stt, turn=model),
                              [("silence", 0.5), ("speech", 1.0)],
                              options=TurnOptions(hold_unfinished=hold))

    conv, ear, events = run_virtual(main())
    (trace,) = conv.traces
    ms = trace["ms_after_speech_end"]
    assert ms["stt_final"] == approx(100.0 + 1000 * stt_s)
    assert ms["turn_confirmed"] == approx(confirmed_ms)
    assert trace["outcome"] == "completed"


def test_a_held_turn_is_asked_again_every_reask_s_and_confirmed_when_the_model_is_sure():
    # Speech ends at 1.5 s. The model says 0.2 with 160 ms of silence, 0.6 with 360 ms, and
    # 0.95 with 560 ms or more (audio from pre-roll at 0.3 s; answers take 50 ms).
    heard = [0.2, 0.6, 0.95]
    model = FakeTurnModel(lambda audio: heard[min(2, round((len(audio) / SAMPLE_RATE - 1.36)
                                                             / 0.2))], Latency(first_s=0.05))

    async def main():
        return await converse(fake_stack(turn=model), [("silence", 0.5), ("speech", 1.0)],
                              options=TurnOptions(reask_s=0.2))

    conv, ear, events = run_virtual(main())
    # 0.6 at 410 ms is above hold_p after end_silence_s: that confirms the turn; no third
    # question.
    assert conv.traces[0]["ms_after_speech_end"]["turn_confirmed"] == approx(410.0)
    assert model.asked == [round((0.2 + 1.0 + s) * SAMPLE_RATE) for s in (0.16, 0.36)]


def test_end_of_turn_model_failure_falls_back_to_silence():
    model = FakeTurnModel(0.99, Latency(fail="drop"))

    async def main():
        return await converse(fake_stack(turn=model), [("silence", 0.5), ("speech", 1.0)])

    conv, ear, events = run_virtual(main())
    assert conv.traces[0]["ms_after_speech_end"]["turn_confirmed"] == approx(300.0)
    assert conv.traces[0]["outcome"] == "completed"


def _pause_then_a_sound(later: str):
    """1 s of speech, a 200 ms pause (a speculation starts at 100 ms; its transcript, "I
    was one.", reads as finished), an 80 ms sound (too short to drop the speculation), then
    silence; the words transcribed after the sound are ``later``. The model says 0.7:
    silence and the words decide. (conv, ear, events, stt, llm)"""
    stt = FakeSTT(_longer_than(1.4, later, "I was one."), Latency(first_s=0.1))
    model = FakeTurnModel(0.7, Latency(first_s=0.05))
    llm = FakeLLM(lambda messages: f"Sure, {messages[-1].content}", Latency(first_s=0.2))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        return await converse(
            fake_stack(stt=stt, llm=llm, tts=tts, turn=model),
            [("silence", 0.5), ("speech", 1.0), ("silence", 0.2), ("speech", 0.08)])

    conv, ear, events = run_virtual(main())
    return conv, ear, events, stt, llm


@pytest.mark.parametrize(("later", "confirmed_ms", "heard_at"), [
    ("I was wondering if", 1000.0, 2.785),  # the words said since trail off: max_silence_s
    ("I was wondering if you are open.", 300.0, 2.245),  # they read as finished
])
def test_the_words_check_judges_the_words_said_after_the_pause(later, confirmed_ms, heard_at):
    conv, ear, events, stt, llm = _pause_then_a_sound(later)
    # The sound ended at 1.78 s: at the pause after it (1.88 s) the speculation is
    # cancelled and started again on a transcript that includes it (1.98 s).
    assert conv.stats == {"speculative_starts": 2, "restarts": 1, "commits": 1}
    assert stt.calls == 2
    (trace,) = conv.traces
    assert trace["speculation"] == "restarted"
    ms = trace["ms_after_speech_end"]  # after the sound's end
    assert ms["vad_end"] == approx(100.0)
    assert ms["stt_final"] == approx(200.0)
    # Held by the words said since (not confirmed on "I was one." at 300 ms), or ended
    # at end_silence_s by them.
    assert ms["turn_confirmed"] == approx(confirmed_ms)
    assert [m[-1].content for m in llm.requests] == ["I was one.", later]
    # The new reply (LLM 2.18 s, TTS 2.23 s) plays at the first pull once the turn is
    # confirmed (2.78 s; 2.08 s); nothing of the stale one was heard.
    assert ear.first_loud_after(0) == approx(heard_at)
    assert conv.history == [ChatMessage("user", later),
                            ChatMessage("assistant", f"Sure, {later}")]
    assert [e["text"] for e in events if e["type"] == "user"] == [later]


def test_filler_covers_a_slow_reply_and_stays_out_of_the_history():
    stt = FakeSTT(["look it up"], Latency(first_s=0.1))
    llm = FakeLLM(["Here you go."], Latency(first_s=2.0))
    tts = FakeTTS(Latency(first_s=0.05))
    options = TurnOptions(filler_after_s=0.5)

    async def main():
        return await converse(fake_stack(stt=stt, llm=llm, tts=tts),
                              [("silence", 0.5), ("speech", 1.0)], options=options)

    conv, ear, events = run_virtual(main())
    # Confirmed at 1.8 s; nothing ready at 2.3 s: the filler (TTS 50 ms) plays at 2.365 s
    # for 0.5 s. The LLM's first token comes at 3.7 s, its audio at 3.765 s.
    assert ear.first_loud_after(0) == approx(2.365)
    assert ear.last_loud_before(3.0) == approx(2.845)
    assert ear.first_loud_after(2.846) == approx(3.765)
    assert tts.spoken == ["One moment.", "Here you go."]
    assert conv.stats["fillers"] == 1
    assert conv.history[-1] == ChatMessage("assistant", "Here you go.")
    assert [e["text"] for e in events if e["type"] == "agent"] == ["One moment.", "Here you go."]


def test_no_filler_when_the_reply_is_on_time():
    stt = FakeSTT(["hi"], Latency(first_s=0.1))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        return await converse(fake_stack(stt=stt, tts=tts), [("silence", 0.5), ("speech", 1.0)],
                              options=TurnOptions(filler_after_s=0.5))

    conv, ear, events = run_virtual(main())
    assert tts.spoken == ["Hi."] and "fillers" not in conv.stats


class _WordsSoFar(FakeSTT):
    """Its sessions' partial transcript: "I said", then one word per 0.5 s of speech pushed
    (the read-ahead holds back the last two words: they may begin an address)."""

    def stream(self):
        session = BufferedSTTStream(self)
        session.partial = lambda: " ".join(
            ["I", "said", *(f"w{c}" for c in "abcdefgh"[:session._speech // 25])])
        return session


@pytest.mark.parametrize("prefill", [True, False])
def test_the_llm_reads_the_callers_words_while_they_speak(prefill):
    stt = _WordsSoFar(["w0 w1 w2"], Latency(first_s=0.1))
    llm = FakeLLM(["Yes."], Latency(first_s=0.2))

    async def main():
        return await converse(fake_stack(stt=stt, llm=llm),
                              [("silence", 0.5), ("speech", 1.0), ("silence", 1.5),
                               ("speech", 1.6)], options=TurnOptions(prefill=prefill))

    conv, ear, events = run_virtual(main())
    assert [t["outcome"] for t in conv.traces] == ["completed", "completed"]
    if not prefill:
        assert llm.prefills == []
        return
    system = ChatMessage("system", "Be brief.")
    first_turn = [ChatMessage("user", "w0 w1 w2"), ChatMessage("assistant", "Yes.")]
    # Each time the words change while the caller speaks (the second utterance: with the
    # history the real request will have), never during the agent's turn.
    assert llm.prefills == [
        [system, ChatMessage("user", "I")], [system, ChatMessage("user", "I said")],
        [system, *first_turn, ChatMessage("user", "I")],
        [system, *first_turn, ChatMessage("user", "I said")],
        [system, *first_turn, ChatMessage("user", "I said wa")]]
    assert llm.requests[1] == [system, *first_turn, ChatMessage("user", "w0 w1 w2")]


class _Dictating(FakeSTT):
    """Partial transcript: "my card is", then one digit group per 0.5 s of speech."""

    def stream(self):
        session = BufferedSTTStream(self)
        said = ["my card is", "4111", "1111", "1111"]
        session.partial = lambda: " ".join(said[: session._speech // 25])
        return session


@pytest.mark.parametrize("redact", [True, False])
def test_the_llm_does_not_read_ahead_a_number_half_said(redact):
    stt = _Dictating(["my card is 4111 1111 1111"], Latency(first_s=0.1))
    llm = FakeLLM(["Thanks."], Latency(first_s=0.2))
    llm.redact = redact

    async def main():
        return await converse(fake_stack(stt=stt, llm=llm),
                              [("silence", 0.5), ("speech", 2.0)])

    run_virtual(main())
    said = [m[-1].content for m in llm.prefills]
    if redact:  # "4111" might be the start of a card number: only the words before it
        # less the last two words, which may begin an address
        assert said == ["my", "my card"]  # "my card is [number]": what was said is redacted
    else:
        assert said == ["my card is", "my card is 4111", "my card is 4111 1111",
                        "my card is 4111 1111 1111"]


@pytest.mark.parametrize(("words", "finished_s", "confirmed_ms"), [
    ("I'd like a table.", 0.7, 700.0),      # finished words cut the model's hold short
    ("I'd like a table for", 0.7, 1000.0),  # unfinished ones do not
    ("I'd like a table.", 0.0, 1000.0),     # off
])
def test_finished_words_shorten_the_models_hold(words, finished_s, confirmed_ms):
    stt = FakeSTT([words], Latency(first_s=0.1))
    model = FakeTurnModel(0.2, Latency(first_s=0.05))  # "not yet", every time it is asked

    async def main():
        return await converse(fake_stack(stt=stt, turn=model),
                              [("silence", 0.5), ("speech", 1.0)],
                              options=TurnOptions(finished_silence_s=finished_s))

    conv, ear, events = run_virtual(main())
    assert conv.traces[0]["ms_after_speech_end"]["turn_confirmed"] == approx(confirmed_ms)


@pytest.mark.parametrize(("words", "p", "asked", "confirmed_ms"), [
    ("Can you tell me?", 0.1, True, 1000.0),   # the LLM: not the end of a question
    ("Can you tell me?", 0.6, True, 220.0),    # it is: confirmed once the LLM answers
    ("Can you tell me?", None, True, 220.0),   # a model that cannot tell: no hold
    ("I'd like a table.", 0.1, False, 210.0),  # statements are not asked
])
def test_the_llm_judges_whether_a_question_is_finished(words, p, asked, confirmed_ms):
    # Speech ends at 1.5 s; transcript at 200 ms; the LLM answers 20 ms later; the
    # end-of-turn model says 0.95 at 210 ms.
    stt = FakeSTT([words], Latency(first_s=0.1))
    llm = FakeLLM(["Sure."], Latency(first_s=0.1), turn_end=lambda text: p, turn_end_s=0.02)
    model = FakeTurnModel(0.95, Latency(first_s=0.05))

    async def main():
        return await converse(fake_stack(stt=stt, llm=llm, turn=model),
                              [("silence", 0.5), ("speech", 1.0)])

    conv, ear, events = run_virtual(main())
    (trace,) = conv.traces
    assert trace["ms_after_speech_end"]["turn_confirmed"] == approx(confirmed_ms)
    assert [m[-1].content for m in llm.turn_ends] == ([words] if asked else [])
    assert trace["outcome"] == "completed"


@pytest.mark.parametrize("later", ["I was one.", "i was one"])
def test_a_speculation_whose_words_taken_again_are_the_same_goes_on(later):
    # As above, but the 80 ms sound said nothing (a click, a breath): the words taken
    # again at the pause after it are the same, and the reply goes on, its LLM request and
    # first clause kept.
    conv, ear, events, stt, llm = _pause_then_a_sound(later)
    assert conv.stats == {"speculative_starts": 1, "restarts": 1, "restarts_kept": 1,
                          "commits": 1}
    assert stt.calls == 2
    assert [m[-1].content for m in llm.requests] == ["I was one."]  # asked once
    (trace,) = conv.traces
    assert trace["speculation"] == "committed"
    ms = trace["ms_after_speech_end"]  # after the sound's end (1.78 s)
    assert (ms["vad_end"], ms["stt_final"]) == (approx(100.0), approx(200.0))
    assert ms["turn_confirmed"] == approx(300.0)  # end_silence_s, once the words are in
    assert ms["llm_first_token"] == approx(120.0)  # asked at 1.70 s, before the sound
    # Ready before the turn was confirmed (2.08 s): it plays at the first pull after it,
    # where a reply made again on the same words would start its LLM only at 1.98 s.
    assert ear.first_loud_after(0) == approx(2.085)
    assert conv.history == [ChatMessage("user", "I was one."),
                            ChatMessage("assistant", "Sure, I was one.")]


@pytest.mark.parametrize(("text", "unfinished"), [
    # Whisper tiny.en's transcripts at mid-sentence pauses of the turn-detection set
    ("I was wondering if...", True),
    ("Please send the invoice to.", True),
    ("I would like to pay my bill with", True),
    ("The package was supposed to arrive on Monday, but...", True),
    ("I think the best time for me would be.", True),
    ("We are looking for a flight from Boston to -", True),
    ("Well, um,", True),
    # ... and at real ends
    ("Can you remind me what the cancellation policy is?", False),
    ("He might have been made still more respectable than he was.", False),
    ("Go forward 10 meters.", False),
    ("10 of clubs", False),
    ("What are you looking at?", False),
    ("", False),
])
def test_a_transcript_that_trails_off_is_unfinished(text, unfinished):
    assert TurnOptions().is_unfinished(text) is unfinished


@pytest.mark.parametrize(("text", "punctuated", "unfinished"), [
    # Whisper closes a finished sentence; a recogniser that never punctuates is not judged
    # so. (Not "...Dashwood had": an auxiliary after a noun is unfinished either way.)
    ("And Mr. John Dashwood had then leisure", True, True),
    ("And Mr. John Dashwood had then leisure", False, False),
    ("And Mr. John Dashwood had then leisure.", True, False),
    ("10 of clubs", True, False),                 # short commands come without
    ("Is it five?", True, False),
])
def test_a_long_transcript_without_closing_punctuation_is_unfinished(text, punctuated,
                                                                    unfinished):
    assert TurnOptions().is_unfinished(text, punctuated=punctuated) is unfinished


@pytest.mark.parametrize(("punctuates", "confirmed_ms"), [(True, 1000.0), (False, 210.0)])
def test_the_engine_knows_whether_its_recogniser_punctuates(punctuates, confirmed_ms):
    stt = FakeSTT(["and then my brother came"], Latency(first_s=0.1))  # 5 words, no "."
    stt.punctuates = punctuates
    model = FakeTurnModel(0.95, Latency(first_s=0.05))

    async def main():
        return await converse(fake_stack(stt=stt, turn=model),
                              [("silence", 0.5), ("speech", 1.0)])

    conv, ear, events = run_virtual(main())
    assert conv.traces[0]["ms_after_speech_end"]["turn_confirmed"] == approx(confirmed_ms)
