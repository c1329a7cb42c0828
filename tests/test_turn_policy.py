"""The end-of-turn policy (turn/policy.py): pure, in samples; the engine and turneval run it."""

from __future__ import annotations

from dataclasses import replace

from rejoinder.bench.turneval import end_of_message
from rejoinder.providers.base import ChatMessage
from rejoinder.testing import FakeLLM
from rejoinder.testing.virtual_time import run_virtual
from rejoinder.turn.options import TurnOptions
from rejoinder.turn.policy import Act, EndOfTurn, QuietTail, Words, words_unfinished

FRAME = 320  # 20 ms
OPTS = TurnOptions(model_after_s=0.16, reask_s=0.0)


def quiet_until(policy: EndOfTurn, seconds: float, words: Words | None) -> list[Act]:
    """Frames of silence until ``seconds`` of it; what each decided."""
    acts = []
    while policy.silence < round(seconds * 16_000):
        policy.quiet(FRAME)
        acts.append(policy.decide(words))
    return acts


def test_a_pause_speculates_then_asks_the_model_and_a_sure_answer_confirms() -> None:
    policy = EndOfTurn(OPTS, model=True)
    policy.speech(16_000)
    acts = quiet_until(policy, 0.16, None)
    # 100 ms: the pause (speculation starts); 160 ms: the model is asked, once.
    assert acts[4] == Act.SPECULATE and acts[7] == Act.ASK
    assert all(a == Act.NONE for i, a in enumerate(acts) if i not in (4, 7))
    assert policy.answer(policy.pause_id, 0.95)
    assert not policy.done(Words.PENDING)  # the words must be in first
    assert policy.done(Words.FINISHED)
    assert not policy.done(Words.UNFINISHED)


def test_an_answer_to_a_pause_the_caller_ended_is_stale() -> None:
    policy = EndOfTurn(OPTS, model=True)
    policy.speech(16_000)
    quiet_until(policy, 0.16, Words.PENDING)
    asked_in = policy.pause_id
    policy.speech(FRAME)
    assert not policy.answer(asked_in, 0.99)
    assert policy.p is None and not policy.done(Words.FINISHED)


def test_unfinished_words_hold_to_max_silence_and_finished_ones_end_a_hold() -> None:
    policy = EndOfTurn(OPTS, model=True)
    policy.speech(16_000)
    quiet_until(policy, 0.3, Words.UNFINISHED)
    policy.answer(policy.pause_id, 0.95)
    assert not policy.done(Words.UNFINISHED)
    acts = quiet_until(policy, 1.0, Words.UNFINISHED)
    assert acts[-1] == Act.CONFIRM and Act.CONFIRM not in acts[:-1]  # at max_silence_s
    # The model says "not yet" (P < hold_p), the words read as finished: finished_silence_s.
    held = EndOfTurn(OPTS, model=True)
    held.speech(16_000)
    quiet_until(held, 0.3, Words.FINISHED)
    held.answer(held.pause_id, 0.2)
    acts = quiet_until(held, OPTS.finished_silence_s, Words.FINISHED)
    assert acts[-1] == Act.CONFIRM and Act.CONFIRM not in acts[:-1]


def test_silence_alone_or_a_failed_model_ends_the_turn_at_end_silence_s() -> None:
    for model, answer in ((False, False), (True, True)):
        policy = EndOfTurn(OPTS, model=model)
        policy.speech(16_000)
        quiet_until(policy, 0.2, None)
        if answer:
            assert policy.answer(policy.pause_id, None)  # the model failed
        acts = quiet_until(policy, OPTS.end_silence_s, None)
        assert acts[-1] & Act.CONFIRM and not any(a & Act.CONFIRM for a in acts[:-1])


def test_a_click_closes_the_utterance_without_a_pause() -> None:
    policy = EndOfTurn(OPTS, model=True)
    policy.speech(FRAME)  # 20 ms: under min_speech_s
    acts = quiet_until(policy, OPTS.end_silence_s, None)
    assert acts[-1] == Act.CLOSE and set(acts[:-1]) == {Act.NONE}
    assert quiet_until(EndOfTurn(OPTS, model=True), 0.0, None) == []


def test_quiet_frames_count_as_silence_only_after_audible_speech_and_up_to_the_cap() -> None:
    tail = QuietTail(2 * FRAME)
    assert not tail.quiet(FRAME, audible=False)  # nothing audible yet: speech
    assert not tail.quiet(FRAME, audible=True)
    assert [tail.quiet(FRAME, audible=False) for _ in range(3)] == [True, True, False]
    tail.silent()
    assert tail.quiet(FRAME, audible=False)
    tail.new_utterance()
    assert not tail.quiet(FRAME, audible=False)


def test_turnevals_words_check_does_not_depend_on_how_fast_the_llm_answers() -> None:
    # The LLM answers after 1 s, twice a call's limit (turn_end_timeout_s): the check must
    # still hear it (it did not, and a loaded machine flipped verdicts from run to run),
    # and ask once per text.
    llm = FakeLLM(["ok"], turn_end=lambda text: 0.05, turn_end_s=1.0)
    end_p = end_of_message(llm, [ChatMessage("system", "be brief")])
    opts = replace(TurnOptions(), question_end_p=0.25)

    async def main() -> list[bool]:
        return [await words_unfinished(opts, "Can you please?", punctuated=True, end_p=end_p)
                for _ in range(2)]

    assert run_virtual(main()) == [True, True]
    assert len(llm.turn_ends) == 1


def test_turneval_keeps_a_speculations_words_through_a_short_sound_as_the_engine_does() -> None:
    from rejoinder.bench.turneval import confirmations

    # 1 s of speech, a pause (speculation, transcript taken), a 60 ms sound (shorter than
    # min_speech_s: the engine keeps the reply and its transcript), then the end.
    speech = ([True] * 50 + [False] * 15 + [True] * 3 + [False] * 75)
    heard: list[int] = []

    def words(start: int, end: int) -> bool:
        heard.append(end)
        return False

    found = confirmations(speech, replace(OPTS, finished_silence_s=0.7), None, latency_s=0.11,
                          words=words, words_latency_s=0.24)
    assert heard == [16_000 + 1_600]  # once, at the first pause: not again after the sound
    assert found[-1].at == 21_760 + 4_800  # the end: 300 ms of silence after the sound
