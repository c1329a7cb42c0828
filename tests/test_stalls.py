"""A provider that stalls midway fails the turn within its idle limit, and the call goes on.

On virtual time with fake providers: each stall is a stream that delivers some items and
then neither sends another nor ends. The turn must fail with a clean ``error`` event exactly
``stream_idle_timeout_s`` after the last item, the caller's next utterance must reach the
STT alone (not with all the audio since the failed turn), and that turn is answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from rejoinder.core.audio import PCM, SAMPLE_RATE
from rejoinder.core.clock import Clock
from rejoinder.providers.base import ChatMessage, Stack
from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack, run_virtual
from rejoinder.testing.loopback import Ear, script_audio, speak
from rejoinder.turn.engine import Conversation, TurnOptions

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731  float sums of 20 ms steps

STALL = Latency(fail="stall", fail_after=1)
# Three utterances of 1 s, 7 s apart: longer than any idle limit, so each turn has ended
# (answered or failed) before the caller speaks again. Speech ends at 1.5, 9.5, 17.5 s.
THREE_TURNS = [("silence", 0.5), ("speech", 1.0), ("silence", 7.0), ("speech", 1.0),
               ("silence", 7.0), ("speech", 1.0)]
# What one utterance sends to the STT: 0.2 s of pre-roll, 1 s of speech and the 0.1 s
# pause at which the speculative reply asks for the transcript.
OWN_AUDIO = round(1.3 * SAMPLE_RATE)


async def converse(stack: Stack, script: Sequence[tuple[str, float]], *,
                   options: TurnOptions | None = None, extra_s: float = 7.0,
                   ) -> tuple[Conversation, Ear, list[tuple[float, dict[str, object]]]]:
    """Like ``testing.loopback.converse``, with the time of every event."""
    clock = Clock()
    events: list[tuple[float, dict[str, object]]] = []
    conv = Conversation(stack, "Be brief.", options=options, clock=clock, call_id="t",
                        events=lambda e: events.append((clock.now(), e)))
    ear = Ear(conv.playout, clock)
    ear_task = asyncio.create_task(ear.run())
    await conv.run(speak(script_audio([*script, ("silence", extra_s)]), clock))
    ear_task.cancel()
    return conv, ear, events


class SeriesLLM(FakeLLM):
    """Request n is served by ``fakes[n]`` (the last one serves the rest)."""

    def __init__(self, *fakes: FakeLLM) -> None:
        super().__init__()
        self.fakes = fakes

    def _stream(self, messages: list[ChatMessage]) -> AsyncIterator[str]:
        self.requests.append(list(messages))
        return self.fakes[min(len(self.requests), len(self.fakes)) - 1]._stream(messages)


class SeriesTTS(FakeTTS):
    def __init__(self, *fakes: FakeTTS) -> None:
        super().__init__()
        self.fakes = fakes
        self.calls = 0

    def _synthesize(self, text: str) -> AsyncIterator[PCM]:
        self.calls += 1
        return self.fakes[min(self.calls, len(self.fakes)) - 1]._synthesize(text)


class SeriesSTT(FakeSTT):
    """Records the length of every audio it is asked about; ``fakes[n]`` answers call n."""

    def __init__(self, *fakes: FakeSTT) -> None:
        super().__init__()
        self.fakes = fakes
        self.lengths: list[int] = []

    async def _transcribe(self, audio: PCM) -> str:
        self.lengths.append(len(audio))
        return await self.fakes[min(len(self.lengths), len(self.fakes)) - 1]._transcribe(audio)


def _stt(*fakes: FakeSTT) -> SeriesSTT:
    return SeriesSTT(*(fakes or (FakeSTT(["what time is it"], Latency(first_s=0.1)),)))


def _ok_llm() -> FakeLLM:
    return FakeLLM(["It is late."], Latency(first_s=0.2, per_item_s=0.05))


def _errors(events: list[tuple[float, dict[str, object]]]) -> list[tuple[float, dict[str, object]]]:
    return [(t, e) for t, e in events if e["type"] == "error"]


def _check_error_event(event: dict[str, object], turn: int, code: str) -> None:
    assert set(event) == {"type", "turn", "code", "message"}
    assert (event["turn"], event["code"]) == (turn, code)
    assert "fake" not in str(event["message"]) and "stalled" not in str(event["message"])


def test_an_llm_that_stalls_after_its_first_token_fails_each_turn_within_the_idle_limit():
    """Every reply sends one token and then nothing: each turn fails 5 s (the default idle
    limit) after that token, and every utterance reaches the STT alone: not 1.3 s, then
    all the audio since the first (9.6 s, ...), as when the reply hung for ever."""
    stt = _stt()
    llm = FakeLLM(["Let me think about that for a moment."],
                  Latency(first_s=0.2, per_item_s=0.05, fail="stall", fail_after=1))
    conv, ear, events = run_virtual(converse(fake_stack(stt=stt, llm=llm), THREE_TURNS))
    assert stt.lengths == [OWN_AUDIO] * 3
    assert [t["outcome"] for t in conv.traces] == ["failed"] * 3
    assert [t["error"] for t in conv.traces] == ["llm_timeout"] * 3
    # Speech ends at 1.5 s; the pause at 1.6 s asks the STT (100 ms) and then the LLM,
    # whose first (and only) token comes at 1.9 s: the turn fails at 6.9 s.
    errors = _errors(events)
    assert [t for t, _ in errors] == [approx(6.9), approx(14.9), approx(22.9)]
    for turn, (_, event) in enumerate(errors, 1):
        _check_error_event(event, turn, "llm_timeout")
    assert llm.cancelled == 3  # each request was closed, not left open
    assert conv.history == []
    assert ear.loud_times == []  # one word is no clause: nothing was said


def test_after_an_llm_stall_the_call_goes_on_and_the_next_turn_is_answered():
    stt = _stt()
    stalled = FakeLLM(["Let me think about that."],
                      Latency(first_s=0.2, per_item_s=0.05, fail="stall", fail_after=2))
    llm = SeriesLLM(_ok_llm(), stalled, _ok_llm())
    conv, ear, events = run_virtual(converse(fake_stack(stt=stt, llm=llm), THREE_TURNS))
    assert [t["outcome"] for t in conv.traces] == ["completed", "failed", "completed"]
    assert conv.traces[1]["error"] == "llm_timeout"
    assert stt.lengths == [OWN_AUDIO] * 3
    # Turn 2: speech ends at 9.5 s, its second token comes at 9.95 s: failed at 14.95 s.
    ((t, event),) = _errors(events)
    assert t == approx(14.95)
    _check_error_event(event, 2, "llm_timeout")
    assert conv.history == [ChatMessage("user", "what time is it"),
                            ChatMessage("assistant", "It is late."),
                            ChatMessage("user", "what time is it"),
                            ChatMessage("assistant", "It is late.")]
    assert ear.first_loud_after(17.5) is not None  # the third turn was heard


def test_an_stt_that_never_answers_fails_the_turn_within_the_idle_limit():
    stt = _stt(FakeSTT(["what time is it"], Latency(first_s=0.1)),
               FakeSTT(["never"], Latency(fail="stall")),
               FakeSTT(["what time is it now"], Latency(first_s=0.1)))
    llm = SeriesLLM(_ok_llm())
    conv, ear, events = run_virtual(converse(fake_stack(stt=stt, llm=llm), THREE_TURNS))
    assert [t["outcome"] for t in conv.traces] == ["completed", "failed", "completed"]
    assert conv.traces[1]["error"] == "stt_timeout"
    assert stt.lengths == [OWN_AUDIO] * 3
    # Turn 2: the transcript is asked for at the pause, 9.6 s: failed at 14.6 s.
    ((t, event),) = _errors(events)
    assert t == approx(14.6)
    _check_error_event(event, 2, "stt_timeout")
    assert [m.content for m in conv.history if m.role == "user"] == [
        "what time is it", "what time is it now"]
    assert ear.first_loud_after(17.5) is not None


def test_a_tts_that_stalls_midway_fails_the_turn_within_the_idle_limit():
    stt = _stt()
    stalled = FakeTTS(Latency(first_s=0.05, fail="stall", fail_after=1))
    tts = SeriesTTS(FakeTTS(Latency(first_s=0.05)), stalled, FakeTTS(Latency(first_s=0.05)))
    conv, ear, events = run_virtual(converse(
        fake_stack(stt=stt, llm=SeriesLLM(_ok_llm()), tts=tts), THREE_TURNS))
    assert [t["outcome"] for t in conv.traces] == ["completed", "failed", "completed"]
    assert conv.traces[1]["error"] == "tts_timeout"
    assert stt.lengths == [OWN_AUDIO] * 3
    # Turn 2: "It is late." is one clause once its last token is in (9.5 + 0.1 + 0.1 +
    # 0.2 + 2 * 0.05 = 10.0 s); its first 100 ms of audio come at 10.05 s, then nothing.
    ((t, event),) = _errors(events)
    assert t == approx(15.05)
    _check_error_event(event, 2, "tts_timeout")
    heard_in_turn_2 = [x for x in ear.loud_times if 9.5 < x < 17.5]
    assert len(heard_in_turn_2) == 5  # the one chunk that came: 5 frames of 20 ms
    assert ear.first_loud_after(17.5) is not None


def test_a_reply_that_fails_while_the_caller_speaks_over_it_leaves_their_words_to_them():
    """The agent's audio stalls; the caller starts talking over it (it is held) and is
    still talking when the reply fails: their speech is the start of their next turn,
    which is answered, and the agent is not left held."""
    stt = _stt()
    # Turn 1's reply: 0.3 s of audio, then the TTS stalls (from 2.05 + 0.3 s: fails 7.35 s).
    stalled = FakeTTS(Latency(first_s=0.05, fail="stall", fail_after=3), chunk_s=0.1)
    tts = SeriesTTS(stalled, FakeTTS(Latency(first_s=0.05)))
    script = [("silence", 0.5), ("speech", 1.0), ("silence", 5.0), ("speech", 1.5)]
    conv, ear, events = run_virtual(converse(
        fake_stack(stt=stt, llm=SeriesLLM(_ok_llm()), tts=tts), script))
    assert [t["outcome"] for t in conv.traces] == ["failed", "completed"]
    ((t, event),) = _errors(events)
    assert t == approx(7.05)
    # The second utterance: 0.2 s of pre-roll, 1.5 s of speech, the 0.1 s pause.
    assert stt.lengths == [OWN_AUDIO, round(1.8 * SAMPLE_RATE)]
    assert ear.first_loud_after(8.5) is not None


def test_a_reply_whose_words_are_taken_again_is_not_heard_before_they_are_in():
    """A short sound in the pause: the speculation's words are taken again at the pause
    after it, and that transcript takes 1.5 s. The turn is confirmed at max_silence_s
    meanwhile (its words never came), but the reply answers the old words: it stays
    silent until the new ones are in (the same, so then it plays, not made again)."""
    stt = _stt(FakeSTT(["what time is it"], Latency(first_s=0.1)),
               FakeSTT(["What time is it?"], Latency(first_s=1.5)))
    llm = SeriesLLM(_ok_llm())
    # Speech ends at 1.5 s; a 60 ms sound at 1.66 s; the pause after it at 1.82 s.
    script = [("silence", 0.5), ("speech", 1.0), ("silence", 0.16), ("speech", 0.06),
              ("silence", 3.0)]
    conv, ear, events = run_virtual(converse(fake_stack(stt=stt, llm=llm), script))
    assert (conv.stats["restarts"], conv.stats["restarts_kept"]) == (1, 1)
    assert len(llm.requests) == 1
    (trace,) = conv.traces
    assert trace["outcome"] == "completed"
    ms = trace["ms_after_speech_end"]  # after the sound's end (1.72 s)
    assert ms["turn_confirmed"] == approx(1000.0)
    assert ms["stt_final"] == approx(1600.0)
    assert ear.first_loud_after(1.5) == approx(3.325)  # 3.32 s: the words are in


def test_an_stt_that_stalls_on_the_speculation_taken_again_fails_the_turn():
    """A short sound in the pause makes the engine take the speculation again at the next
    pause; that second transcription never comes: the turn, confirmed at max_silence_s
    (its words never came), fails 5 s after it was asked (not held for ever, its audio
    never played) and the next one is answered."""
    stt = _stt(FakeSTT(["what time is it"], Latency(first_s=0.1)),
               FakeSTT(["never"], Latency(fail="stall")),
               FakeSTT(["what time is it now"], Latency(first_s=0.1)))
    # Speech ends at 1.5 s; a 60 ms sound at 1.66 s; the pause after it at 1.82 s.
    script = [("silence", 0.5), ("speech", 1.0), ("silence", 0.16), ("speech", 0.06),
              ("silence", 7.0), ("speech", 1.0)]
    conv, ear, events = run_virtual(converse(
        fake_stack(stt=stt, llm=SeriesLLM(_ok_llm())), script))
    assert [t["outcome"] for t in conv.traces] == ["failed", "completed"]
    assert conv.stats["restarts"] == 1
    ((t, event),) = _errors(events)
    assert t == approx(6.82)
    _check_error_event(event, 1, "stt_timeout")
    # The second transcript covers the utterance up to the pause after the sound; the
    # next one only its own.
    assert stt.lengths == [OWN_AUDIO, round(1.52 * SAMPLE_RATE), OWN_AUDIO]
    assert ear.first_loud_after(1.5) > 8.72  # turn 1 was never heard; turn 2 was
    assert [m.content for m in conv.history if m.role == "user"] == ["what time is it now"]


def test_speech_over_the_agent_that_cannot_be_transcribed_interrupts_it(caplog):
    """The words over the agent are needed to tell a backchannel from an interruption; if
    the STT fails on them, the agent stops and listens (it is not left held), and the
    caller's turn is answered."""
    stt = _stt(FakeSTT(["what time is it"], Latency(first_s=0.1)),
               FakeSTT(["lost"], Latency(first_s=0.1, fail="drop")),
               FakeSTT(["tell me more"], Latency(first_s=0.1)))
    llm = FakeLLM(["One two three four five six seven eight nine ten.", "Sure."],
                  Latency(first_s=0.2))
    # The reply (2.5 s of audio) starts at 1.95 s; the caller talks over it 2.5-3.0 s.
    script = [("silence", 0.5), ("speech", 1.0), ("silence", 1.0), ("speech", 0.5)]
    with caplog.at_level("WARNING"):
        conv, ear, events = run_virtual(converse(fake_stack(stt=stt, llm=llm), script))
    assert [t["outcome"] for t in conv.traces] == ["interrupted", "completed"]
    assert conv.stats["interruptions"] == 1 and _errors(events) == []
    assert "not transcribed" in caplog.text
    assert ear.last_loud_before(3.2) < 2.6  # held at the barge-in, never resumed
    assert conv.history[-2:] == [ChatMessage("user", "tell me more"),
                                 ChatMessage("assistant", "Sure.")]
