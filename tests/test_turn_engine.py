"""The turn engine on virtual time with fake providers: exact ordering and timing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rejoinder.core.audio import SAMPLE_RATE
from rejoinder.core.clock import Clock
from rejoinder.providers.base import ChatMessage
from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, FakeVAD, Latency, fake_stack, run_virtual
from rejoinder.testing.loopback import Ear, converse, script_audio, speak
from rejoinder.turn.engine import Conversation, TurnOptions

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731  float sums of 20 ms steps


async def _call(script, stack, options=None, extra_s=5.0):
    return await converse(stack, script, options=options, extra_s=extra_s)


def _one_turn(options=None):
    stt = FakeSTT(["what time is it"], Latency(first_s=0.1))
    llm = FakeLLM(["Sure, I can help with that. It is late now."],
                  Latency(first_s=0.2, per_item_s=0.05))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0)],
                           fake_stack(stt=stt, llm=llm, tts=tts), options=options)

    conv, ear, events = run_virtual(main())
    (trace,) = conv.traces
    assert trace["outcome"] == "completed"
    # TTS received the first clause while the LLM was still streaming the second.
    assert tts.spoken == ["Sure, I can help with that.", "It is late now."]
    assert [e["text"] for e in events if e["type"] == "user"] == ["what time is it"]
    assert conv.history == [
        ChatMessage("user", "what time is it"),
        ChatMessage("assistant", "Sure, I can help with that. It is late now."),
    ]
    return trace, ear


def test_one_turn_without_speculation_runs_the_stages_after_the_turn_ends():
    trace, ear = _one_turn(TurnOptions(speculate=False))
    ms = trace["ms_after_speech_end"]
    assert trace["speculation"] is None
    # speech ends at 1.5 s; 300 ms of silence ends the turn; then the fixed provider delays.
    assert ms["vad_end"] == approx(300.0)
    assert ms["turn_confirmed"] == approx(300.0)
    assert ms["stt_final"] == approx(400.0)
    assert ms["llm_first_token"] == approx(600.0)
    # "that." arrives with token 6 (at 600 + 5*50 ms) and ends the first clause at once.
    assert ms["first_clause"] == approx(850.0)
    assert ms["tts_first_audio"] == approx(900.0)
    # The transport pulls every 20 ms (at 5, 25, 45 ... ms): the next pull is at 905 ms.
    assert ms["first_audio_sent"] == approx(905.0)
    assert ear.first_loud_after(1.5) == approx(1.5 + 0.905)


def test_speculation_starts_at_the_pause_and_plays_when_the_turn_is_confirmed():
    trace, ear = _one_turn()
    ms = trace["ms_after_speech_end"]
    assert trace["speculation"] == "committed"
    # The pause (100 ms of silence) starts STT, LLM and TTS; the turn is confirmed at
    # 300 ms while they run: everything moves 200 ms earlier.
    assert ms["vad_end"] == approx(100.0)
    assert ms["stt_final"] == approx(200.0)
    assert ms["turn_confirmed"] == approx(300.0)
    assert ms["llm_first_token"] == approx(400.0)
    assert ms["first_clause"] == approx(650.0)
    assert ms["tts_first_audio"] == approx(700.0)
    assert ms["first_audio_sent"] == approx(705.0)
    assert ear.first_loud_after(1.5) == approx(1.5 + 0.705)


def _reply_heard(script, vad=None, quiet_tail_s=0.2):
    """When the caller hears the reply (no speculation, instant providers), counted from
    the end of the script's first speech segment: the silence timer shows through."""
    stack = fake_stack(stt=FakeSTT(["what time is it"]), llm=FakeLLM(["Sure."]),
                       vad=vad or FakeVAD(threshold_dbfs=-50.0))
    options = TurnOptions(speculate=False, quiet_tail_s=quiet_tail_s)
    conv, ear, _ = run_virtual(_call(script, stack, options))
    assert [t["outcome"] for t in conv.traces] == ["completed"]
    loud_end = script[0][1] + script[1][1]
    return ear.first_loud_after(loud_end) - loud_end


def test_quiet_end_of_speech_counts_toward_the_silence_timer():
    # 100 ms the VAD still calls speech (-48 dBFS, above the fake VAD's -50) but below
    # quiet_dbfs (-45): the silence timer starts at the last audible frame.
    plain = _reply_heard([("silence", 0.5), ("speech", 1.0)])
    assert plain == approx(0.305)  # 300 ms of silence, then the next 20 ms pull
    quiet_tail = [("silence", 0.5), ("speech", 1.0), ("speech", 0.1, -48)]
    assert _reply_heard(quiet_tail) == approx(plain)
    # Without the credit the same audio is answered 100 ms later.
    assert _reply_heard(quiet_tail, quiet_tail_s=0.0) == approx(plain + 0.1)


def test_a_long_quiet_stretch_is_speech_and_a_quiet_caller_gets_no_credit():
    plain = _reply_heard([("silence", 0.5), ("speech", 1.0)])
    # 300 ms of quiet frames the VAD calls speech is longer than quiet_tail_s (200 ms):
    # quiet speech, not an end. The silence counts from its end, as the VAD says.
    capped = _reply_heard([("silence", 0.5), ("speech", 1.0), ("speech", 0.3, -48)])
    assert capped == approx(plain + 0.3)
    # A quiet caller (a steady -48 dBFS) is judged against their own peak: all speech.
    never = _reply_heard([("silence", 0.5), ("speech", 0.9, -48), ("speech", 0.1, -48)])
    assert never == approx(plain + 0.1)


def test_a_noisy_line_raises_the_level_a_frame_needs_to_be_audible():
    vad = FakeVAD(threshold_dbfs=-30.0)
    tail = ("speech", 0.1, -28)  # above -45 dBFS, but within 6 dB of a -33 dBFS line
    clean = _reply_heard([("silence", 0.5), ("speech", 1.0), tail], vad)
    noisy = _reply_heard([("silence", 0.5, -33), ("speech", 1.0), tail], vad)
    assert clean == approx(noisy + 0.1)  # on the clean line the tail is audible speech


def test_speculative_audio_waits_for_the_turn_to_be_confirmed():
    # Fast providers: the first clause is synthesised 100 ms after the pause, before the
    # 300 ms silence has confirmed the turn. Nothing plays until then.
    stt = FakeSTT(["hi"], Latency(first_s=0.02))
    llm = FakeLLM(["Hello there."], Latency(first_s=0.05))
    tts = FakeTTS(Latency(first_s=0.03))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0)],
                           fake_stack(stt=stt, llm=llm, tts=tts))

    conv, ear, events = run_virtual(main())
    ms = conv.traces[0]["ms_after_speech_end"]
    assert ms["tts_first_audio"] == approx(200.0)
    assert ms["turn_confirmed"] == approx(300.0)
    assert ear.first_loud_after(0) == approx(1.5 + 0.305)  # the first pull after 1.8 s


REPLY = ("One two three four. Five six seven eight. Nine ten eleven twelve. "
         "Thirteen fourteen fifteen sixteen. Seventeen eighteen nineteen twenty.")


def test_barge_in_stops_audio_within_a_frame_cancels_llm_and_keeps_only_what_was_heard():
    stt = FakeSTT(["count for me", "stop"], Latency(first_s=0.1))
    llm = FakeLLM([REPLY, "Okay."], Latency(first_s=0.21, per_item_s=0.1))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0), ("silence", 1.6),
                            ("speech", 0.3)], fake_stack(stt=stt, llm=llm, tts=tts),
                           options=TurnOptions(max_reply_sentences=10))

    conv, ear, events = run_virtual(main())
    first, second = conv.traces
    assert first["outcome"] == "interrupted" and second["outcome"] == "completed"
    # The reply's audio began at 2.265 s (pause 1.6, STT 1.7, token 4 at 2.21, TTS 2.26).
    assert ear.first_loud_after(1.5) == approx(2.265)
    # Caller speech starts at 3.10 s; after 60 ms (3.16 s) the agent's audio is held: the
    # last loud frame reached the caller at 3.145 s, the last pull before the decision.
    assert ear.last_loud_before(3.5) == approx(3.145)
    # The caller's words ("stop", STT 100 ms after their 100 ms pause at 3.50 s) make it
    # an interruption at 3.60 s. Their turn is confirmed at 3.70 s; the reply to it was
    # speculated at once (the transcript was already final): LLM 210 ms, TTS 50 ms.
    assert ear.first_loud_after(3.146) == approx(3.62 + 0.21 + 0.05 + 0.005)
    # The LLM was still streaming (a token every 100 ms from 1.91 s) and was cancelled
    # after its 17th token (at 3.51 s).
    assert llm.cancelled == 1
    assert llm.tokens_sent == 17 + 1  # plus the one token of the second reply
    # 45 frames (0.90 s) of the 1.0 s first clause were heard: 3 of its 4 words.
    assert [e for e in events if e["type"] == "interrupted"] == [
        {"type": "interrupted", "turn": 1, "heard": "One two three"}]
    assert conv.history == [
        ChatMessage("user", "count for me"),
        ChatMessage("assistant", "One two three", interrupted=True),
        ChatMessage("user", "stop"),
        ChatMessage("assistant", "Okay."),
    ]
    # The second request saw the truncated, marked history.
    assert llm.requests[1][1:] == conv.history[:3]
    assert conv.stats["interruptions"] == 1


def _talk_over(noise_s, words):
    stt = FakeSTT(["tell me a story", words], Latency(first_s=0.1))
    llm = FakeLLM(["Once upon a time there was a fox."], Latency(first_s=0.2, per_item_s=0.02))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        # The reply's audio plays from 2.105 s for 2 s (the last token at 2.04 s, TTS 50 ms);
        # the caller's sound starts at 2.5 s.
        return await _call([("silence", 0.5), ("speech", 1.0), ("silence", 1.0),
                            ("speech", noise_s)], fake_stack(stt=stt, llm=llm, tts=tts))

    conv, ear, events = run_virtual(main())
    assert [t["outcome"] for t in conv.traces] == ["completed"]
    assert not [e for e in events if e["type"] == "interrupted"]
    assert conv.history[-1] == ChatMessage("assistant", "Once upon a time there was a fox.")
    # All 2 s of the reply were played: 100 frames.
    played = [t for t in ear.loud_times if t > 2.0]
    assert len(played) == 100
    return conv, ear, events, stt


def test_an_interruption_before_the_first_word_leaves_no_assistant_message():
    # The reply's audio starts at 2.265 s and the caller speaks over it from 2.28 s: they
    # heard a few frames of the first word, nothing that counts as said. (Without
    # take_back_s, under which they would take the turn back: below.)
    stt = FakeSTT(["count for me", "stop"], Latency(first_s=0.1))
    llm = FakeLLM([REPLY, "Okay."], Latency(first_s=0.21, per_item_s=0.1))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0), ("silence", 0.78),
                            ("speech", 0.3)], fake_stack(stt=stt, llm=llm),
                           options=TurnOptions(take_back_s=0.0))

    conv, ear, events = run_virtual(main())
    assert [e for e in events if e["type"] == "interrupted"] == [
        {"type": "interrupted", "turn": 1, "heard": ""}]
    # An empty "interrupted" reply teaches a small model to answer with an ellipsis.
    assert conv.history == [ChatMessage("user", "count for me"), ChatMessage("user", "stop"),
                            ChatMessage("assistant", "Okay.")]


@pytest.mark.parametrize(("resume_s", "take_back_s", "taken_back"), [
    (0.1, 0.2, True),    # 95 ms into the reply's audio: the caller takes the turn back
    (0.3, 0.2, False),   # 295 ms in: a barge-in, as before
    (0.1, 0.0, False),   # take_back_s off: a barge-in from the first sound
])
def test_a_caller_who_goes_on_as_the_reply_starts_takes_the_turn_back(resume_s, take_back_s,
                                                                      taken_back):
    # "Tell me a story" (0.5-1.5 s); the reply's audio plays from 2.105 s; the caller goes
    # on ("...about a fox", 0.5 s) from 2.105 + resume_s.
    lengths: list[int] = []

    def transcribe(audio):
        lengths.append(len(audio))
        return "tell me a story" if len(lengths) == 1 else "tell me a story about a fox"

    stt = FakeSTT(transcribe, Latency(first_s=0.1))
    llm = FakeLLM(["Once upon a time there was a fox.", "A fox, then."],
                  Latency(first_s=0.2, per_item_s=0.02))
    tts = FakeTTS(Latency(first_s=0.05))
    resume = 2.1 + resume_s  # frames are 20 ms: the caller's first frame after the silence

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0), ("silence", resume - 1.5),
                            ("speech", 0.5)], fake_stack(stt=stt, llm=llm, tts=tts),
                           options=TurnOptions(take_back_s=take_back_s))

    conv, ear, events = run_virtual(main())
    assert ear.first_loud_after(0) == approx(2.105)
    if not taken_back:
        assert (conv.stats["interruptions"], conv.stats["take_backs"]) == (1, 0)
        assert [t["outcome"] for t in conv.traces] == ["interrupted", "completed"]
        return
    assert (conv.stats["interruptions"], conv.stats["take_backs"]) == (0, 1)
    assert [t["outcome"] for t in conv.traces] == ["abandoned", "completed"]
    # The agent stopped once the caller had spoken min_speech_s (2.2 + 0.12 s), and spoke
    # again only after their pause (2.8 s).
    assert ear.last_loud_before(2.8) == approx(2.305)
    assert ear.first_loud_after(2.305) > 2.8
    # The second transcript covers the whole utterance: from 0.2 s of pre-roll before its
    # onset (0.3 s) to the pause after "...about a fox" (2.8 s).
    assert lengths == [round(1.3 * SAMPLE_RATE), round(2.5 * SAMPLE_RATE)]
    assert conv.history == [ChatMessage("user", "tell me a story about a fox"),
                            ChatMessage("assistant", "A fox, then.")]


def test_a_short_sound_as_the_reply_starts_neither_takes_the_turn_nor_stops_the_agent():
    stt = FakeSTT(["tell me a story", "mm"], Latency(first_s=0.1))
    llm = FakeLLM(["Once upon a time there was a fox."], Latency(first_s=0.2, per_item_s=0.02))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():  # a 60 ms sound 95 ms into the reply's audio
        return await _call([("silence", 0.5), ("speech", 1.0), ("silence", 0.7),
                            ("speech", 0.06)], fake_stack(stt=stt, llm=llm, tts=tts))

    conv, ear, events = run_virtual(main())
    assert [t["outcome"] for t in conv.traces] == ["completed"]
    assert not conv.stats["take_backs"] and not conv.stats["interruptions"]
    assert len([t for t in ear.loud_times if t > 2.0]) == 100  # all 2 s of it, no gap:
    assert ear.loud_times[-1] == approx(2.105 + 99 * 0.02)  # (a barge-in would hold it)
    assert stt.calls == 1  # the utterance closed after the window: nothing more to hear


def test_a_clause_of_marks_alone_is_not_spoken_and_is_not_a_sentence():
    stt = FakeSTT(["hello"], Latency(first_s=0.1))
    llm = FakeLLM(["... Okay then. That is all. And more."], Latency(first_s=0.2))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0)],
                           fake_stack(stt=stt, llm=llm, tts=tts))

    conv, ear, events = run_virtual(main())
    assert tts.spoken == ["Okay then.", "That is all."]  # two sentences, as configured


def test_sound_shorter_than_barge_in_min_does_not_even_pause_the_agent():
    conv, ear, events, stt = _talk_over(0.04, "")
    assert ear.loud_times[0] == approx(2.105)
    assert ear.loud_times[-1] == approx(2.105 + 99 * 0.02)  # no gap anywhere
    assert stt.calls == 1 and not [e for e in events if e["type"] == "hold"]


def test_false_interruption_resumes_where_the_agent_stopped():
    # A 100 ms click: long enough to pause the agent (60 ms), too short to be words.
    conv, ear, events, stt = _talk_over(0.1, "")
    assert stt.calls == 1  # judged by its length alone
    assert conv.stats["false_interruptions"] == 1
    # Held from 2.56 s (after 60 ms) until the caller's 100 ms pause at 2.70 s.
    assert ear.last_loud_before(2.56) == approx(2.545)
    assert ear.first_loud_after(2.546) == approx(2.705)
    assert [e["type"] for e in events if e["type"] in ("hold", "resume")] == ["hold", "resume"]


@pytest.mark.parametrize("heard", ["Mm-hmm.", "and", "Yeah, okay."])
def test_backchannel_does_not_interrupt_and_the_agent_resumes(heard):
    conv, ear, events, stt = _talk_over(0.4, heard)
    assert stt.calls == 2 and conv.stats["backchannels"] == 1
    # Held from 2.56 s; the caller's pause at 3.00 s, STT 100 ms: resumes at 3.10 s.
    assert ear.last_loud_before(2.56) == approx(2.545)
    assert ear.first_loud_after(2.546) == approx(3.105)


def test_pause_before_agent_audio_carries_utterance_into_next_turn():
    lengths: list[int] = []

    def transcribe(audio):
        lengths.append(len(audio))
        return "first half and second half"

    stt = FakeSTT(transcribe, Latency(first_s=0.1))
    llm = FakeLLM(["Got it."], Latency(first_s=0.5))

    async def main():
        # 0.8 s speech, a 0.4 s pause (ends the turn after 0.3 s), then 0.8 s more speech:
        # the resumed speech reaches 200 ms at 1.9 s, before any reply audio (due ~2.05 s).
        return await _call([("silence", 0.5), ("speech", 0.8), ("silence", 0.4),
                            ("speech", 0.8)], fake_stack(stt=stt, llm=llm))

    conv, ear, events = run_virtual(main())
    assert [t["outcome"] for t in conv.traces] == ["abandoned", "completed"]
    # The second transcription covered both halves (and the pause between them).
    assert lengths[1] > lengths[0] + 0.8 * 16000
    assert conv.history == [ChatMessage("user", "first half and second half"),
                            ChatMessage("assistant", "Got it.")]
    assert ear.first_loud_after(0) > 2.5


def test_llm_stream_dropping_fails_the_turn_but_not_the_call():
    stt = FakeSTT(["one", "two"], Latency(first_s=0.1))
    llm = FakeLLM(["Never finished sentence here.", "Fine."],
                  Latency(first_s=0.2, per_item_s=0.05, fail="drop", fail_after=2))
    llm_ok = FakeLLM(["Fine now."], Latency(first_s=0.2))
    calls = {"n": 0}

    class Flaky(FakeLLM):
        async def _stream(self, messages):
            calls["n"] += 1
            source = llm if calls["n"] == 1 else llm_ok
            async for d in source._stream(messages):
                yield d

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0), ("silence", 2.0),
                            ("speech", 1.0)], fake_stack(stt=stt, llm=Flaky()))

    conv, ear, events = run_virtual(main())
    assert [t["outcome"] for t in conv.traces] == ["failed", "completed"]
    assert conv.traces[0]["error"] == "llm_failed"  # a code: the text goes to the log only
    assert [e["code"] for e in events if e["type"] == "error"] == ["llm_failed"]
    # The failed turn left no half-reply in the history.
    assert conv.history == [ChatMessage("user", "two"), ChatMessage("assistant", "Fine now.")]


def test_reply_stops_after_the_sentence_limit_and_the_llm_is_cancelled():
    stt = FakeSTT(["talk"], Latency(first_s=0.1))
    llm = FakeLLM(["First one here. Second one here! Third one here. Fourth."],
                  Latency(first_s=0.2, per_item_s=0.05))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0)],
                           fake_stack(stt=stt, llm=llm, tts=tts),
                           options=TurnOptions(max_reply_sentences=2))

    conv, ear, events = run_virtual(main())
    assert tts.spoken == ["First one here.", "Second one here!"]
    assert conv.history[-1] == ChatMessage("assistant", "First one here. Second one here!")
    # "here!" is token 6 and completes the second sentence: generation stops there.
    assert llm.tokens_sent == 6 and llm.cancelled == 1


def test_history_is_capped_in_blocks_so_the_prompt_prefix_stays_stable():
    from types import SimpleNamespace

    async def main():
        conv = Conversation(fake_stack(), "sys", options=TurnOptions(max_history_messages=6))
        firsts = []
        for i in range(12):
            reply = SimpleNamespace(user_text=f"q{i}")
            conv._commit(reply, f"a{i}", interrupted=False)  # type: ignore[arg-type]
            assert len(conv.history) <= 6 and conv.history[0].role == "user"
            firsts.append(conv.history[0].content)
        return firsts

    # Over the cap (8 messages) the history drops to its newest exchange and then grows
    # again: the oldest kept message, and so the prompt's prefix, changes every third turn.
    assert run_virtual(main()) == ["q0", "q0", "q0", "q3", "q3", "q3", "q6", "q6", "q6",
                                   "q9", "q9", "q9"]


def test_greeting_is_spoken_first_and_recorded():
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        clock = Clock()
        conv = Conversation(fake_stack(tts=tts), "sys", clock=clock,
                            greeting="Hello, how can I help?")
        ear = Ear(conv.playout, clock)
        task = asyncio.create_task(ear.run())
        await conv.run(speak(script_audio([("silence", 3.0)]), clock))
        task.cancel()
        return conv, ear

    conv, ear = run_virtual(main())
    assert tts.spoken == ["Hello, how can I help?"]
    assert ear.first_loud_after(0) == approx(0.065)  # TTS 50 ms, then the next 20 ms pull
    assert conv.history == [ChatMessage("assistant", "Hello, how can I help?")]
    assert [t["outcome"] for t in conv.traces] == ["completed"]


def test_leading_silence_of_the_synthesised_reply_is_not_played():
    class SlowStart(FakeTTS):
        async def _synthesize(self, text):
            first = True
            async for chunk in super()._synthesize(text):
                if first:  # 200 ms of silence before the voice, as some synthesisers do
                    chunk = np.concatenate([np.zeros(3200, np.int16), chunk])
                    first = False
                yield chunk

    stt = FakeSTT(["hi"], Latency(first_s=0.1))
    tts = SlowStart(Latency(first_s=0.05))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0)], fake_stack(stt=stt, tts=tts))

    conv, ear, events = run_virtual(main())
    # Pause 1.6 s, STT 1.7 s, "Hi." at once, TTS 1.75 s; confirmed 1.8 s: the first pull
    # after that is loud (the 200 ms of silence were dropped), and the whole tone plays.
    assert ear.first_loud_after(0) == approx(1.805)
    assert len(ear.loud_times) == 13  # the 0.25 s tone: 12.5 frames, the last one padded


@pytest.mark.parametrize("onset_s", [0.0, 0.04, 0.1])
def test_barge_in_hold_counts_from_the_first_loud_frame_not_from_the_vads_verdict(onset_s):
    # A VAD that calls speech only after ``onset_s`` (Silero: 30-100 ms). The agent is
    # held once the VAD says speech and the sound has been loud for 60 ms, counted from
    # its first loud frame: at 2.56 s (+ the VAD's lag when that is longer than 60 ms).
    stt = FakeSTT(["tell me a story", "Mm-hmm."], Latency(first_s=0.1))
    llm = FakeLLM(["Once upon a time there was a fox."], Latency(first_s=0.2, per_item_s=0.02))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0), ("silence", 1.0),
                            ("speech", 0.4)],
                           fake_stack(vad=FakeVAD(onset_s=onset_s), stt=stt, llm=llm,
                                      tts=FakeTTS(Latency(first_s=0.05))))

    conv, ear, events = run_virtual(main())
    held = 2.5 + max(0.06, onset_s + 0.02)  # the VAD's verdict comes with the next frame
    assert [e["type"] for e in events if e["type"] in ("hold", "resume")] == ["hold", "resume"]
    # The last frame pulled before the hold (pulls at 5, 25, 45 ... ms past each frame).
    assert ear.last_loud_before(held) == approx(held - 0.015)
    assert ear.first_loud_after(held - 0.014) > 2.9


@pytest.mark.parametrize(("onset_s", "speech_ms"), [(0.0, 60.0), (0.04, 60.0), (0.1, 120.0)])
def test_the_hold_event_says_how_long_the_caller_had_spoken_over_the_agent(onset_s, speech_ms):
    # The caller's sound starts at 2.5 s over the reply; the hold comes once it has been
    # loud for barge_in_min_s (60 ms) and the VAD says speech (its verdict one frame after
    # onset_s): speech_ms is that time, counted from the first loud frame.
    stt = FakeSTT(["tell me a story", "Mm-hmm."], Latency(first_s=0.1))
    llm = FakeLLM(["Once upon a time there was a fox."], Latency(first_s=0.2, per_item_s=0.02))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0), ("silence", 1.0),
                            ("speech", 0.4)],
                           fake_stack(vad=FakeVAD(onset_s=onset_s), stt=stt, llm=llm,
                                      tts=FakeTTS(Latency(first_s=0.05))))

    conv, ear, events = run_virtual(main())
    assert [e for e in events if e["type"] == "hold"] == [
        {"type": "hold", "turn": 1, "speech_ms": speech_ms}]
    # The agent's last frame before the hold left when that much of the caller's speech had.
    assert ear.last_loud_before(2.5 + speech_ms / 1000) == approx(2.5 + speech_ms / 1000 - 0.015)
