"""The turn engine on virtual time with fake providers: exact ordering and timing."""

from __future__ import annotations

import asyncio

import pytest

from rejoinder.core.clock import Clock
from rejoinder.providers.base import ChatMessage
from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack, run_virtual
from rejoinder.testing.loopback import Ear, script_audio, speak
from rejoinder.turn.engine import Conversation, TurnOptions

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731  float sums of 20 ms steps


async def _call(script, stack, options=None, extra_s=5.0):
    clock = Clock()
    events: list[dict] = []
    conv = Conversation(stack, "Be brief.", options=options, events=events.append,
                        clock=clock, call_id="t")
    ear = Ear(conv.playout, clock)
    ear_task = asyncio.create_task(ear.run())
    audio = script_audio([*script, ("silence", extra_s)])
    await conv.run(speak(audio, clock))
    ear_task.cancel()
    return conv, ear, events


def test_one_turn_streams_first_clause_to_tts_before_llm_finishes():
    stt = FakeSTT(["what time is it"], Latency(first_s=0.1))
    llm = FakeLLM(["Sure, I can help with that. It is late now."],
                  Latency(first_s=0.2, per_item_s=0.05))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0)], fake_stack(stt=stt, llm=llm,
                                                                          tts=tts))

    conv, ear, events = run_virtual(main())
    (trace,) = conv.traces
    assert trace["outcome"] == "completed"
    ms = trace["ms_after_speech_end"]
    # speech ends at 1.5 s; 300 ms of silence ends the turn; then the fixed provider delays.
    assert ms["vad_end"] == approx(300.0)
    assert ms["stt_final"] == approx(400.0)
    assert ms["llm_first_token"] == approx(600.0)
    # "that." arrives with token 6 (at 600 + 5*50 ms) and ends the first clause at once.
    assert ms["first_clause"] == approx(850.0)
    assert ms["tts_first_audio"] == approx(900.0)
    # The transport pulls every 20 ms (at 5, 25, 45 ... ms): the next pull is at 905 ms.
    assert ms["first_audio_sent"] == approx(905.0)
    assert ear.first_loud_after(1.5) == approx(1.5 + 0.905)
    # TTS received the first clause while the LLM was still streaming the second.
    assert tts.spoken == ["Sure, I can help with that.", "It is late now."]
    assert [e["text"] for e in events if e["type"] == "user"] == ["what time is it"]
    assert conv.history == [
        ChatMessage("user", "what time is it"),
        ChatMessage("assistant", "Sure, I can help with that. It is late now."),
    ]


REPLY = "One two three four. Five six seven eight. Nine ten eleven twelve. Thirteen fourteen."


def test_barge_in_stops_audio_cancels_llm_and_keeps_only_what_was_heard():
    stt = FakeSTT(["count for me", "stop"], Latency(first_s=0.1))
    llm = FakeLLM([REPLY, "Okay."], Latency(first_s=0.21, per_item_s=0.1))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        return await _call([("silence", 0.5), ("speech", 1.0), ("silence", 1.6),
                            ("speech", 0.6)], fake_stack(stt=stt, llm=llm, tts=tts),
                           options=TurnOptions(max_reply_sentences=10))

    conv, ear, events = run_virtual(main())
    first, second = conv.traces
    assert first["outcome"] == "interrupted" and second["outcome"] == "completed"
    # Caller speech starts at 3.10 s; 200 ms later (3.30 s) the agent is interrupted.
    # Agent audio began at 2.465 s; the last loud frame reached the caller at 3.285 s,
    # the last pull before the decision; the next pull (3.305 s) was already silent.
    assert ear.last_loud_before(3.30) == approx(3.285)
    assert ear.first_loud_after(3.286) == approx(4.0 + 0.1 + 0.21 + 0.05 + 0.005)
    # The LLM was still streaming (tokens every 100 ms from 2.11 s) and was cancelled
    # after its 12th token.
    assert llm.cancelled == 1
    assert llm.tokens_sent == 12 + 1  # plus the one token of the second reply
    # 42 frames (0.84 s) of the 1.0 s first clause were heard: 3 of its 4 words.
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


def test_short_noise_while_agent_talks_does_not_interrupt():
    stt = FakeSTT(["tell me a story"], Latency(first_s=0.1))
    llm = FakeLLM(["Once upon a time there was a fox."], Latency(first_s=0.2, per_item_s=0.02))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main():
        # Reply audio plays from about 2.1 s for 2 s; a 150 ms "mm-hm" at 2.5 s.
        return await _call([("silence", 0.5), ("speech", 1.0), ("silence", 1.0),
                            ("speech", 0.15)], fake_stack(stt=stt, llm=llm, tts=tts))

    conv, ear, events = run_virtual(main())
    assert [t["outcome"] for t in conv.traces] == ["completed"]
    assert stt.calls == 1
    assert not [e for e in events if e["type"] == "interrupted"]
    assert conv.history[-1] == ChatMessage("assistant", "Once upon a time there was a fox.")


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
    assert "dropped" in conv.traces[0]["error"]
    assert [e["type"] for e in events if e["type"] == "error"] == ["error"]
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
    from rejoinder.turn.engine import Reply

    async def main():
        conv = Conversation(fake_stack(), "sys", options=TurnOptions(max_history_messages=6))
        firsts = []
        for i in range(12):
            reply = Reply(i, None, None)  # type: ignore[arg-type]
            reply.user_text = f"q{i}"
            conv._commit(reply, f"a{i}", interrupted=False)
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
