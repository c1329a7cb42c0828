"""The end-of-turn policy (turn/policy.py): pure, in samples; the engine and turneval run it."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from rejoinder.bench.turneval import end_of_message
from rejoinder.providers.base import ChatMessage
from rejoinder.testing import FakeLLM
from rejoinder.testing.virtual_time import run_virtual
from rejoinder.turn.options import TurnOptions
from rejoinder.turn.policy import (
    Act,
    EndOfTurn,
    EndWeights,
    Heard,
    QuietTail,
    Words,
    end_features,
    words_unfinished,
)

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


def test_a_pause_after_a_short_sound_speculates_again_and_waits_for_its_words() -> None:
    policy = EndOfTurn(OPTS, model=False)
    policy.speech(16_000)
    acts = quiet_until(policy, 0.2, None)
    assert acts[4] == Act.SPECULATE  # "I was one."
    policy.speech(3 * FRAME)  # 60 ms: under min_speech_s, the speculation is kept
    acts = quiet_until(policy, 0.1, Words.FINISHED)
    # Its transcript is stale: taken again at the pause, and the turn waits for the new
    # one, not for the old words that read as finished.
    assert acts[-1] == Act.SPECULATE and set(acts[:-1]) == {Act.NONE}
    acts = quiet_until(policy, OPTS.max_silence_s - 0.02, Words.PENDING)
    assert set(acts) == {Act.NONE}


def test_turneval_takes_the_words_again_at_the_pause_after_a_short_sound() -> None:
    from rejoinder.bench.turneval import confirmations

    # 1 s of speech, a pause (speculation: "I was one.", finished), a 60 ms sound
    # (shorter than min_speech_s: the speculation is kept), then the end. The words said
    # by then trail off ("I was wondering if").
    speech = ([True] * 50 + [False] * 15 + [True] * 3 + [False] * 75)
    heard: list[int] = []

    def words(start: int, end: int) -> bool:
        heard.append(end)
        return end > 20_000

    found = confirmations(speech, replace(OPTS, finished_silence_s=0.7), None, latency_s=0.11,
                          words=words, words_latency_s=0.24)
    assert heard == [16_000 + 1_600, 21_760 + 1_600]  # at each pause
    # Held by the new words to max_silence_s after the sound (the old ones, finished,
    # would have ended it at end_silence_s: 300 ms).
    assert [c.at for c in found] == [21_760 + 16_000]


@pytest.mark.parametrize(("later", "latency_s", "same"), [
    ("i was one", 0.24, 1),     # the same words (a click): the reply could have been kept
    ("I was wondering if", 0.24, 0),
    ("I was one.", 0.5, 0),     # the stale transcript was not in yet: nothing to compare
])
def test_turneval_counts_the_speculations_taken_again_on_the_same_words(later, latency_s,
                                                                       same) -> None:
    from collections import Counter

    from rejoinder.bench.turneval import confirmations

    speech = ([True] * 50 + [False] * 15 + [True] * 3 + [False] * 75)  # as above

    def words(start: int, end: int) -> Heard:
        return Heard("I was one." if end < 20_000 else later, unfinished=False)

    restarts: Counter[str] = Counter()
    confirmations(speech, OPTS, None, latency_s=0.11, words=words, words_latency_s=latency_s,
                  restarts=restarts)
    assert restarts == {"taken": 1, "same_words": same}


FITTED = replace(OPTS, end_signal="fitted", end_threshold=0.5)
# P(end) crosses 0.5 at 0.5 s of silence for a finished transcript; "unfinished" pushes it
# past max_silence_s.
WEIGHTS = EndWeights({"bias": -5.0, "silence_s": 10.0, "unfinished": -10.0})


def test_the_fitted_signal_ends_the_turn_when_its_p_reaches_the_threshold() -> None:
    policy = EndOfTurn(FITTED, model=True, weights=WEIGHTS)
    policy.speech(16_000)
    quiet_until(policy, 0.3, Words.PENDING)
    assert policy.end_p() is None  # no transcript yet
    policy.hear(Heard("I would like a table.", unfinished=False, end_p=0.6))
    assert policy.end_p() is None  # the model has not answered
    policy.answer(policy.pause_id, 0.2)
    assert policy.end_p() == pytest.approx(1 / (1 + math.exp(2.0)))  # 0.3 s: z = -2
    acts = quiet_until(policy, 0.5, Words.FINISHED)
    assert acts[-1] == Act.CONFIRM and Act.CONFIRM not in acts[:-1]


def test_the_fitted_signal_holds_unfinished_words_and_pending_ones_to_max_silence() -> None:
    for words, heard in ((Words.UNFINISHED, Heard("Send it to", True)), (Words.PENDING, None)):
        policy = EndOfTurn(FITTED, model=True, weights=WEIGHTS)
        policy.speech(16_000)
        quiet_until(policy, 0.3, words)
        if heard is not None:
            policy.hear(heard)
        policy.answer(policy.pause_id, 0.99)
        acts = quiet_until(policy, FITTED.max_silence_s, words)
        assert acts[-1] == Act.CONFIRM and Act.CONFIRM not in acts[:-1]


def test_the_weights_that_ship_load_and_name_only_known_features() -> None:
    weights = EndWeights.load()
    known = end_features(0.5, 0.5, Heard("Hello.", False, 0.5))
    assert weights.weights and set(weights.weights) <= set(known)
    assert 0.0 < weights.p(known) < 1.0


def test_fitting_recovers_which_way_each_signal_points() -> None:
    from rejoinder.bench.fitturn import fit

    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(400), rng.uniform(0.3, 1.0, 400), rng.integers(0, 2, 400)])
    y = (rng.uniform(size=400) < 1 / (1 + np.exp(-(-3 + 6 * x[:, 1] - 4 * x[:, 2])))).astype(float)
    beta = fit(x, y, np.ones(400) / 400, l2=0.0)
    assert beta[1] > 2 and beta[2] < -1


def test_with_the_fitted_signal_the_llm_is_asked_about_every_transcript() -> None:
    from rejoinder.testing import fake_stack
    from rejoinder.turn.engine import Conversation

    async def main(signal: str) -> tuple[int, Heard | None]:
        llm = FakeLLM(["ok"], turn_end=lambda text: 0.7)
        conv = Conversation(fake_stack(llm=llm), "sys",
                            options=TurnOptions(end_signal=signal))
        assert not await conv.unfinished("I would like a table for two.")
        return len(llm.turn_ends), conv.turn.heard

    asked, heard = run_virtual(main("fitted"))
    assert asked == 1 and heard == Heard("I would like a table for two.", False, 0.7)
    assert run_virtual(main("rules")) == (0, None)  # the rules ask about questions only


def test_end_signal_is_rules_or_fitted() -> None:
    from rejoinder.core.errors import ConfigError

    with pytest.raises(ConfigError, match="turn.end_signal"):
        TurnOptions(end_signal="magic")
    with pytest.raises(ConfigError, match="turn.end_threshold"):
        TurnOptions(end_threshold=1.5)


def test_turneval_replays_the_fitted_signal_with_what_the_transcript_says() -> None:
    from rejoinder.bench.turneval import confirmations

    speech = [True] * 50 + [False] * 75  # 1 s of speech, then the end

    def words(start: int, end: int) -> Heard:
        return Heard("I would like a table.", unfinished=False, end_p=0.6)

    found = confirmations(speech, FITTED, lambda a, b: 0.2, latency_s=0.11, words=words,
                          words_latency_s=0.24, weights=WEIGHTS)
    # The transcript is in at 340 ms of silence, where z = -5 + 3.4 (P 0.17); P reaches
    # the threshold (0.5) at 500 ms of silence.
    assert [c.at for c in found] == [16_000 + 8_000]


def test_a_caller_who_went_on_after_a_confirmation_gets_more_patience() -> None:
    opts = replace(OPTS, patience_s=0.2)
    policy = EndOfTurn(opts, model=False)
    for expected_s in (0.3, 0.5, 0.7):  # end_silence_s, then 0.2 s more after each
        policy.speech(16_000)
        acts = quiet_until(policy, expected_s, None)
        assert acts[-1] & Act.CONFIRM and not any(a & Act.CONFIRM for a in acts[:-1])
        policy.overridden()  # the caller went on: they had only paused
    assert EndOfTurn(OPTS, model=False).patience == 0  # off by default


def test_the_engine_gives_more_patience_after_the_caller_overrides_a_confirmation() -> None:
    from rejoinder.testing import FakeSTT, FakeTTS, Latency, fake_stack
    from rejoinder.testing.loopback import converse

    stt = FakeSTT(["book a table", "for two"], Latency(first_s=0.05))
    llm = FakeLLM(["Sure.", "Done."], Latency(first_s=1.0))
    options = TurnOptions(model="none", patience_s=0.2)

    async def main() -> tuple[Any, Any, Any]:
        return await converse(fake_stack(stt=stt, llm=llm, tts=FakeTTS(Latency(first_s=0.05))),
                              [("silence", 0.5), ("speech", 1.0), ("silence", 0.5),
                               ("speech", 1.0)], options=options)

    conv, _, _ = run_virtual(main())
    # Confirmed 0.3 s into the pause, before the slow reply was heard; the caller went on.
    assert conv.turn.patience == round(0.2 * 16_000)
