"""The end-of-turn policy: when the caller has finished speaking.

One pure class, :class:`EndOfTurn`, holds the decision; the engine (``turn/engine.py``)
runs it on a live call and ``bench/turneval.py`` replays it on recorded audio, so what is
measured is what ships. It does no I/O and reads no clock: durations are samples of caller
audio, fed in frame by frame (``speech``, ``quiet``), and the other signals arrive as
events (the model's ``answer``, the words of the speculative transcript); each returns
what to do (:class:`Act`) or whether the turn is over.

- **Silence** is counted from the caller's last audible frame: quiet frames after audible
  speech are silence even while the VAD, which lags, still calls them speech (up to
  ``quiet_tail_s`` in a row; :class:`QuietTail`, ``turn/level.py``).
- **Pause** (``pause_s`` of silence after at least ``min_speech_s`` of speech): a
  *speculative* reply starts at once (:attr:`Act.SPECULATE`: final transcript, LLM, first
  TTS clause) with its audio held back. If the caller made sounds since the speculation's
  transcript was taken (shorter than ``min_speech_s``: they do not drop it; espeak-ng's
  words reach the VAD as 60-120 ms runs), it is taken again at this pause, so that the
  words check judges words that include them ("I was wondering if...", not the "I was
  one." of the pause before). At ``model_after_s`` the end-of-turn model is asked
  about the audio so far (:attr:`Act.ASK`; a little later than the pause: it judges an end
  better with some silence).
- **Turn confirmed**, by two signals: the model is sure (P >= ``confirm_p``) as soon as it
  answers; or ``end_silence_s`` of silence, unless the model says the caller is
  mid-sentence (P < ``hold_p``: then only ``max_silence_s`` ends the turn). The words are a
  check on both (``hold_unfinished``): the speculative transcript must be in (the reply
  cannot speak before it anyway), and if it trails off ("I was wondering if...", "send it
  to the") only ``max_silence_s`` ends the turn; if it reads as finished,
  ``finished_silence_s`` ends it though the model says "not yet".
- **The fitted signal** (``end_signal = "fitted"``): instead of those rules, one calibrated
  probability that the turn is over, from the silence so far, the model's P, the words'
  verdict and the LLM's P of the message ending there (:class:`EndWeights`, a logistic
  model fitted on the tuning part of turneval's set by ``bench/fitturn.py``); the turn
  ends when it reaches ``end_threshold`` (or at ``max_silence_s``), once the transcript
  and the model's answer are in.
- **Caller goes on**: any voiced frame ends the pause (the model's answer to it is stale).
"""

from __future__ import annotations

import enum
import json
import logging
import math
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rejoinder.core.audio import SAMPLE_RATE
from rejoinder.turn.options import TurnOptions

log = logging.getLogger(__name__)

__all__ = ["Act", "EndOfTurn", "EndWeights", "Heard", "QuietTail", "Words", "end_features",
           "words_unfinished"]

# P(the message ends here), None: unknown.
EndP = Callable[[str], Coroutine[object, object, float | None]]


class Act(enum.IntFlag):
    """What the engine does after a frame of silence."""

    NONE = 0
    SPECULATE = 1   # a pause began: start a held reply (in place of any speculating)
    ASK = 2         # ask the end-of-turn model about the audio so far
    CONFIRM = 4     # the turn is over
    CLOSE = 8       # too little speech before this silence: a click or a breath


class Words(enum.Enum):
    """The speculative reply's transcript, as the policy sees it."""

    PENDING = "pending"          # not in yet
    UNFINISHED = "unfinished"    # in, and it trails off
    FINISHED = "finished"        # in, and it reads as finished


@dataclass(frozen=True)
class Heard:
    """The speculative transcript, as the fitted signal reads it."""

    text: str
    unfinished: bool             # the words check's verdict (:func:`words_unfinished`)
    end_p: float | None = None   # the LLM's P that the message ends here; None: unknown


_CLOSING = frozenset(".?!…\"')")


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def end_features(silence_s: float, turn_p: float | None, heard: Heard) -> dict[str, float]:
    """What the fitted signal weighs (each a number; a missing signal is 0 with a flag)."""
    text = heard.text.strip()
    return {
        "bias": 1.0,
        "silence_s": silence_s,
        "turn_logit": 0.0 if turn_p is None else _logit(turn_p),
        "turn_missing": float(turn_p is None),
        "unfinished": float(heard.unfinished),
        "llm_logit": 0.0 if heard.end_p is None else _logit(heard.end_p),
        "llm_missing": float(heard.end_p is None),
        "question": float(text.endswith("?")),
        "open": float(bool(text) and text[-1] not in _CLOSING),
    }


@dataclass(frozen=True)
class EndWeights:
    """A logistic model of P(the turn is over) over :func:`end_features`."""

    weights: Mapping[str, float]

    def p(self, features: Mapping[str, float]) -> float:
        z = sum(w * features[name] for name, w in self.weights.items())
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    @classmethod
    def load(cls, path: str | Path | None = None) -> EndWeights:
        """From ``path``, or the weights that ship (``turn/end_weights.json``)."""
        if path is None:
            text = resources.files("rejoinder.turn").joinpath("end_weights.json").read_text()
        else:
            text = Path(path).read_text()
        return cls(dict(json.loads(text)["weights"]))


async def words_unfinished(opts: TurnOptions, text: str, *, punctuated: bool,
                           end_p: EndP | None) -> bool:
    """Whether the caller's transcript reads as unfinished: it trails off
    (``TurnOptions.is_unfinished``), or it is a question whose end the LLM finds unlikely
    (``end_p`` below ``question_end_p``; ``end_p`` None: no LLM to ask)."""
    if not text:
        return False
    if opts.is_unfinished(text, punctuated=punctuated):
        return True
    if end_p is None or opts.question_end_p <= 0 or not text.rstrip().endswith("?"):
        return False
    p = await end_p(text)
    return p is not None and p < opts.question_end_p


class QuietTail:
    """Whether a frame the VAD calls speech is the caller having stopped: quiet, after
    audible speech in this utterance, and not yet ``cap`` samples of such frames in a row
    (longer, it is quiet speech: the VAD is trusted again). The VAD lags the end of speech
    by 50-200 ms; the caller's silence starts at their last audible frame."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._audible = False  # the utterance has had an audible frame
        self._run = 0          # samples of quiet frames the VAD calls speech, in a row

    def quiet(self, n: int, audible: bool) -> bool:
        """A frame of ``n`` samples the VAD calls speech: True if it counts as silence."""
        if audible:
            self._audible, self._run = True, 0
            return False
        if not self._audible:
            return False
        self._run += n
        return self._run <= self.cap

    def silent(self) -> None:
        """A frame the VAD calls silence."""
        self._run = 0

    def new_utterance(self) -> None:
        self._audible = False


def _samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


class EndOfTurn:
    """The decision for one call, utterance after utterance (see the module's docstring).

    ``model``: an end-of-turn model is asked. Counters, in samples: ``voiced`` (from the
    utterance's onset to its last voiced frame), ``run`` (the current voiced run) and
    ``silence`` (since the last voiced frame)."""

    def __init__(self, opts: TurnOptions, *, model: bool,
                 weights: EndWeights | None = None) -> None:
        self.opts = opts
        self.model = model
        #: The fitted signal's model (``end_signal = "fitted"``; None: the rules decide).
        self.weights = weights if opts.end_signal == "fitted" else None
        self.heard: Heard | None = None  # the speculation's transcript, for the weights
        self._pause = _samples(opts.pause_s)
        self._end = _samples(opts.end_silence_s)
        self._max = _samples(opts.max_silence_s)
        self._finished = _samples(opts.finished_silence_s)
        self._min_speech = _samples(opts.min_speech_s)
        self._after = _samples(opts.model_after_s)
        self._reask = _samples(opts.reask_s)
        self._patience_step = _samples(opts.patience_s)
        self.patience = 0  # samples of silence added for this call (:meth:`overridden`)
        self.voiced = self.run = self.silence = 0
        self.pause_id = 0
        self.paused = False        # the current silence has reached pause_s
        self.asking = False        # a question to the model is on its way
        self.failed = False        # the model failed in this pause: silence alone decides
        self.p: float | None = None  # the model's latest answer in this pause
        self.next_ask: float = self._after  # silence at which the model is asked next

    # -- frames --------------------------------------------------------------------------
    def speech(self, n: int) -> None:
        """A voiced frame of ``n`` samples: any pause is over."""
        self.run += n
        self.voiced += self.silence + n
        self.silence = 0
        if self.paused:
            self.end_pause()

    def quiet(self, n: int) -> None:
        """A frame of ``n`` samples of silence; :meth:`decide` says what follows from it
        (unless the agent holds the turn, or the caller speaks over it: :meth:`pause_begins`)."""
        self.run = 0
        self.silence += n

    def pause_begins(self) -> bool:
        """Whether the silence has just become a pause (once per pause)."""
        if self.paused or self.silence < self._pause:
            return False
        self.paused = True
        self.pause_id += 1
        return True

    def decide(self, words: Words | None) -> Act:
        """After a frame of silence in the caller's utterance, while the turn is theirs.
        ``words``: the speculative reply's transcript, None while no reply is speculating."""
        if self.voiced < self._min_speech:
            return Act.CLOSE if self.silence >= self._end and words is None else Act.NONE
        act = Act.NONE
        if self.pause_begins() and self.opts.speculate:
            # At every pause: a speculation still there from an earlier one is stale (only
            # voiced frames end a pause), so it starts again in its place.
            act |= Act.SPECULATE
            words, self.heard = Words.PENDING, None
        if (self.paused and self.model and not self.asking and self.silence >= self.next_ask
                and (self.p is None or self.p < self.opts.confirm_p)):
            # Asked at model_after_s; while it says "not yet", again every reask_s.
            self.asking = True
            self.next_ask += self._reask if self._reask > 0 else math.inf
            act |= Act.ASK
        if self.done(words):
            act |= Act.CONFIRM
        return act

    # -- the other signals -----------------------------------------------------------------
    def answer(self, pause_id: int, p: float | None) -> bool:
        """The model's answer to the question asked in pause ``pause_id`` (None: it failed,
        silence alone decides this pause). False if it is stale (the caller spoke
        meanwhile); then nothing changes. Otherwise :meth:`done` says what follows."""
        if pause_id != self.pause_id or not self.paused:
            return False
        self.asking = False
        self.p, self.failed = p, p is None
        return True

    def done(self, words: Words | None) -> bool:
        """Whether the turn is over now (in a pause), given the words (see :meth:`decide`)."""
        if not self.paused:
            return False
        o, p, s = self.opts, self.p, self.silence
        if self.weights is not None and words is not None and o.hold_unfinished:
            return self._fitted(words)
        end = self._end + self.patience  # a caller who paused before is given more time
        if not self.model or self.failed:
            over = s >= end
        elif p is None:  # not answered yet: a pause must not end the turn on silence alone
            over = s >= self._max
        else:
            over = (p >= o.confirm_p or (p >= o.hold_p and s >= end) or s >= self._max)
        if not o.hold_unfinished or words is None:
            return over
        if over and s < self._max and words is not Words.FINISHED:
            return False  # the words are not in yet, or they trail off: not an end yet
        if (not over and self._finished and s >= self._finished + self.patience
                and words is Words.FINISHED):
            return True  # the model still says "not yet", but the words read as finished
        return over

    def overridden(self) -> None:
        """The caller went on after a turn was confirmed (before they heard the reply): they
        pause long mid-sentence, so every later silence of the call must be ``patience_s``
        longer to end a turn (up to ``max_silence_s``), and longer again after each."""
        self.patience = min(self.patience + self._patience_step, self._max)

    def hear(self, heard: Heard) -> None:
        """The speculation's transcript is in (for the fitted signal)."""
        self.heard = heard

    def end_p(self) -> float | None:
        """The fitted P(the turn is over) now; None while a signal it needs is missing."""
        if self.weights is None or self.heard is None:
            return None
        if self.model and self.p is None and not self.failed:
            return None  # the model has not answered yet
        silence_s = max(0, self.silence - self.patience) / SAMPLE_RATE
        return self.weights.p(end_features(silence_s, self.p, self.heard))

    def _fitted(self, words: Words) -> bool:
        if self.silence >= self._max:
            return True
        if words is Words.PENDING:
            return False
        p = self.end_p()
        return p is not None and p >= self.opts.end_threshold

    # -- bookkeeping -----------------------------------------------------------------------
    def end_pause(self) -> None:
        """The caller's silence is over (or the utterance): the next one is a new pause."""
        self.paused = self.asking = self.failed = False
        self.p = None
        self.next_ask = self._after

    def new_utterance(self) -> None:
        self.voiced = self.run = self.silence = 0
        self.end_pause()
