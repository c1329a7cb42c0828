"""Turn-taking knobs, validated on construction (``[turn]`` in the configuration)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rejoinder.core.bounds import check_numbers
from rejoinder.core.errors import ConfigError
from rejoinder.turn.grammar import FUNCTION_WORDS, STATEMENT_OPEN, open_ending, words

# Words that, alone, are the caller listening rather than taking the turn. "yes" and "no"
# are left out on purpose: said while the agent talks they usually answer it.
BACKCHANNELS = ("mm", "mmm", "hmm", "hm", "mhm", "mm-hm", "mm-hmm", "uh-huh", "uh", "um",
                "ah", "oh", "yeah", "yep", "right", "okay", "ok", "i see", "got it", "sure")

# Words a statement does not end on (a question may: "Who are you with?"): prepositions,
# nominative pronouns, hesitations. The grammar of the words check (``turn/grammar.py``)
# adds the words no sentence ends on (determiners, conjunctions, contracted auxiliaries)
# and the auxiliaries and copulas that need their complement ("WordPress is").
UNFINISHED_WORDS = STATEMENT_OPEN
# A transcript ending on these has trailed off: "I was wondering if...", "Boston to -".
_CLOSING = frozenset(".?!…\"')")
_TRAILING = re.compile(r"(\.\.\.|…|-|–|—|,)\s*$")

# The bounds of every numeric option (the finer rules follow in ``__post_init__``). A
# timer over 10 s is a mistake, often milliseconds written as seconds: a caller left in
# silence that long has hung up. The word and message counts stop at sizes no call reaches.
_SECONDS = ("pause_s", "end_silence_s", "max_silence_s", "finished_silence_s",
            "model_after_s", "reask_s", "quiet_tail_s", "min_speech_s", "barge_in_min_s",
            "backchannel_max_s", "preroll_s", "filler_after_s", "patience_s", "take_back_s")
_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(_SECONDS, (0.0, 10.0)),
    **dict.fromkeys(("vad_threshold", "confirm_p", "hold_p", "question_end_p",
                     "end_threshold"), (0.0, 1.0)),
    "quiet_dbfs": (-120.0, 0.0),  # 16-bit silence is -96 dBFS
    "unpunctuated_words": (0, 100),
    "max_history_messages": (2, 1000),
    "clause_min_words": (1, 50),
    "max_reply_sentences": (1, 100),
}


@dataclass(frozen=True)
class TurnOptions:
    """Seconds unless named otherwise.

    The end of a turn takes two signals (see ``turn/engine.py``): silence, counted in
    caller audio, and the end-of-turn model's P(complete), asked once per pause.
    """

    vad_threshold: float = 0.5
    quiet_dbfs: float = -45.0      # speech frames below this level at the end of an
    quiet_tail_s: float = 0.2      # utterance count as silence, up to this long (see level.py)
    pause_s: float = 0.1           # silence after speech that is a pause: speculation starts
    end_silence_s: float = 0.3     # silence that ends the turn, unless the model says "not yet"
    max_silence_s: float = 1.0     # silence that ends the turn whatever the model says
    # ...or this much silence when the words are in and read as finished (not unfinished:
    # see ``hold_unfinished``), though the model says "not yet". 0: off (max_silence_s).
    # On turneval 0.7 s cut the end delay (mean 505 -> 459 ms, p95 1009 -> 814 ms) for one
    # more cut-off in 56 (docs/benchmarks.md).
    finished_silence_s: float = 0.7
    model_after_s: float = 0.16    # silence before the end-of-turn model is asked
    # While the model says "not yet", ask it again this much later (0: once per pause): it
    # judges an end better with more silence. Off: with ``finished_silence_s`` the turneval
    # set had 2 fewer cut-offs in 56 without it (mean end delay +51 ms, p95 the same), and
    # each question is ~0.1 s of a core taken from the reply being prepared meanwhile
    # (docs/benchmarks.md).
    reask_s: float = 0.0
    confirm_p: float = 0.9         # model at least this sure: the turn ends when it answers
    hold_p: float = 0.5            # model below this: wait for max_silence_s
    # The words as a third signal: a turn is confirmed only once the speculative transcript
    # is in (the reply needs it anyway), and one that ends unfinished ("...", "and", "to the")
    # waits for max_silence_s whatever the model says. See ``is_unfinished``.
    hold_unfinished: bool = True
    unfinished_words: tuple[str, ...] = UNFINISHED_WORDS
    # ...and a transcript that ends in "?" is unfinished if the LLM gives its end below this
    # (``LLM.turn_end_p``; 0: never asked). Whisper ends fragments that start like questions
    # with "?" ("Can you tell me?"); on the turneval set SmolLM2 gave those 0.01-0.18
    # (LibriVox: up to 0.39) and finished questions 0.28-0.77. For statements its answer
    # does not separate the two (ROC AUC 0.64), so they are left to the word list.
    question_end_p: float = 0.25
    # ...and, from a recogniser that punctuates (Whisper), a transcript of this many words or
    # more with no closing punctuation is unfinished ("And Mr. John Dashwood had"); shorter
    # commands often come without ("10 of clubs"). 0: off.
    unpunctuated_words: int = 5
    # How the signals are combined: "rules" (the thresholds above) or "fitted": one
    # calibrated P(the turn is over) from the silence, the model's P, the words and the
    # LLM's P of the message ending (turn/policy.py; weights in turn/end_weights.json,
    # fitted by bench/fitturn.py), the turn ending when it reaches ``end_threshold``.
    # Rules by default: on turneval's tuning part "fitted" at 0.6 cut off as many (9 of
    # 27) at a mean end delay 38 ms lower, within that part's noise, for one more LLM
    # question per turn (docs/benchmarks.md). 0.6 was chosen on the tuning part.
    end_signal: str = "rules"
    end_threshold: float = 0.6
    # Adaptive within a call: each time the caller goes on after their turn was confirmed
    # (they had only paused), later silences must be this much longer to end a turn
    # (end_silence_s, finished_silence_s; the fitted signal's silence). 0: off.
    patience_s: float = 0.0
    speculate: bool = True         # start STT/LLM/TTS at the pause, before the turn is certain
    prefill: bool = True           # read the caller's words into the LLM while they speak
    model: str = "smart-turn"      # the end-of-turn model: "smart-turn" or "none" (silence)
    min_speech_s: float = 0.12     # shorter voiced stretches are noise, not a turn
    barge_in_min_s: float = 0.06   # caller speech this long while the agent talks pauses it
    backchannel_max_s: float = 1.0  # speech longer than this over the agent always interrupts
    # A caller who goes on within this long of the first audio of the reply to their turn
    # (``min_speech_s`` of speech, begun in it) takes the turn back: the agent stops, the
    # reply is abandoned (not an interruption: nothing of it enters the history) and their
    # utterance goes on, to be answered whole. They had only paused. 0: off (their speech
    # over the reply is a barge-in from its first sound).
    take_back_s: float = 0.2
    backchannels: tuple[str, ...] = BACKCHANNELS
    preroll_s: float = 0.2         # audio kept from before speech onset, for STT
    max_history_messages: int = 16
    clause_min_words: int = 3
    max_reply_sentences: int = 2   # a spoken reply stops after this many sentences
    filler_after_s: float = 0.0    # say ``filler`` if nothing is ready this long after the
    filler: str = "One moment."    # turn is confirmed (0: never)

    def __post_init__(self) -> None:
        check_numbers(self, "turn", _RANGES)  # first: NaN would blame the wrong field below
        for name in ("vad_threshold", "confirm_p", "hold_p"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"turn.{name}", "must be between 0 and 1")
        if self.unpunctuated_words < 0:
            raise ConfigError("turn.unpunctuated_words", "must not be negative")
        if not 0.0 <= self.question_end_p < 1.0:
            raise ConfigError("turn.question_end_p", "must be at least 0 and below 1")
        for name in ("pause_s", "end_silence_s", "max_silence_s", "min_speech_s",
                     "barge_in_min_s", "backchannel_max_s", "preroll_s", "filler_after_s",
                     "quiet_tail_s", "reask_s", "finished_silence_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"turn.{name}", "must not be negative")
        if not self.pause_s <= self.model_after_s <= self.end_silence_s:
            raise ConfigError("turn.model_after_s",
                              "must be between turn.pause_s and turn.end_silence_s")
        if not self.pause_s <= self.end_silence_s <= self.max_silence_s:
            raise ConfigError("turn.end_silence_s",
                              "must be between turn.pause_s and turn.max_silence_s")
        if self.quiet_dbfs >= 0:
            raise ConfigError("turn.quiet_dbfs", "must be below 0 (full scale)")
        if self.hold_p > self.confirm_p:
            raise ConfigError("turn.hold_p", "must not be above turn.confirm_p")
        if self.end_signal not in ("rules", "fitted"):
            raise ConfigError("turn.end_signal", f"{self.end_signal!r} is not rules or fitted")
        if self.model not in ("smart-turn", "none"):
            raise ConfigError("turn.model", f"{self.model!r} is not smart-turn or none")
        if self.max_reply_sentences < 1:
            raise ConfigError("turn.max_reply_sentences", "must be at least 1")
        if self.max_history_messages < 2:
            raise ConfigError("turn.max_history_messages", "must be at least 2")
        if self.filler_after_s and not self.filler.strip():
            raise ConfigError("turn.filler", "must not be empty when turn.filler_after_s is set")

    def is_backchannel(self, text: str) -> bool:
        """Whether ``text`` (a transcript) says nothing but listening words, or nothing.

        One or two words that are only listening words or words that say nothing alone
        (``unfinished_words`` and the grammar's function words) count too: Whisper writes a
        murmured "mm-hm" as "and" or "you" about as often as "Mm-mm.", and a caller who
        says "and..." over the agent and stops has not taken the turn."""
        allowed = {w for phrase in self.backchannels for w in words(phrase)}
        said = words(text)
        if len(said) <= 2:
            allowed |= set(self.unfinished_words) | FUNCTION_WORDS
        return all(w in allowed for w in said)

    def is_unfinished(self, text: str, *, punctuated: bool = False) -> bool:
        """Whether a transcript reads as a sentence the caller has not finished: it trails
        off (an ellipsis, a dash, a comma); or, from a recogniser that punctuates
        (``punctuated``), it has ``unpunctuated_words`` words or more and no closing
        punctuation; or it stops where no English sentence can end
        (:func:`rejoinder.turn.grammar.open_ending`: "and", "the", "WordPress is", "The
        thing is that"; a statement on one of ``unfinished_words``)."""
        text = text.strip()
        if not text:
            return False
        if _TRAILING.search(text):
            return True
        if (punctuated and self.unpunctuated_words and text[-1] not in _CLOSING
                and len(words(text)) >= self.unpunctuated_words):
            return True
        return open_ending(text, punctuated=punctuated,
                           statement_open=frozenset(self.unfinished_words))
