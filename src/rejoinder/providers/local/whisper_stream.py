"""Transcribing while the caller speaks, so the final transcript is ready when they stop.

One :class:`WhisperStream` per caller (``WhisperSTT.stream()``); the turn engine drives it::

    session = stt.stream()
    await session.push(frame)        # every 20 ms frame of the caller's speech (never blocks)
    session.partial()                # latest hypothesis of the utterance so far
    text = await session.finish()    # final transcript of everything pushed so far
    session.reset()                  # next utterance

How: the session keeps its own speech/silence decision per frame (an adaptive energy gate,
or the caller's VAD through ``push(frame, speech=...)``) and, while the worker is idle, runs
one background pass at a time:

- **pause pass**: once the caller has been silent for ``pause_s`` (120 ms) after speech,
  transcribe the audio up to now. If they do not speak again, that result *is* the final
  transcript and ``finish()`` returns it without any inference. A turn is only confirmed
  after a longer silence (200-300 ms), so the pass has usually finished by then.
- **commit** (``StreamOptions(commit=True)``, off by default): a pass whose audio ends with
  ``commit_gap_s`` (120 ms) of silence or more (the caller has moved past it, so the audio
  will not change) is committed: its text is kept, and later passes start at that point
  with the committed text as Whisper's prompt, so the tail left for the end stays short.
  It costs accuracy (see ``StreamOptions.commit``).
- **partial pass**: while speech goes on, the uncommitted tail is transcribed every
  ``step_s`` of new audio, for ``partial()``.
- **forced prefix** (``StreamOptions(force_prefix=True)``, off by default): the pause and
  final passes are told how their transcript starts: the longest common word prefix of the
  last two partial passes over the same start (LocalAgreement-2, as in whisper_streaming;
  trailing punctuation aside), less its last word, when 3 words or more remain. The hope was
  a shorter decode, but CTranslate2 runs forced tokens one decoder step each, like generated
  ones. Measured (``python -m rejoinder.bench.sttstream``: 5 LibriVox sentences and 2 short
  commands at real-time pace, 3 times each, off and on alternating; 2 shared cores): the
  pass whose text was the transcript forced 6.8 of its 14 tokens on average, yet took
  236 ms (median) against 233 ms without; end of speech to transcript p50/p95 357/563 ms
  against 354/677 ms (noise); the same 12 word errors in 243 words either way.

Background passes are skipped whenever the shared worker is busy (another call's final,
another pass), so they never queue up. A final transcript asked for while one runs waits for
it (up to a whole pass: ~0.2-0.4 s on a long sentence); running it beside the pass on a
second CTranslate2 replica saved nothing on 2 cores (docs/benchmarks.md). Everything is
measured in samples pushed, not wall-clock time, so a session behaves the same under test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE
from rejoinder.core.errors import ConfigError
from rejoinder.providers.base import guarded

log = logging.getLogger(__name__)

PassKind = Literal["pause", "commit", "partial", "final"]
T = TypeVar("T")
_Job = tuple["Future[str]", int]  # the decoding, and the session generation it belongs to
_MIN_PREFIX_WORDS = 3  # a shorter stable prefix is not forced
_TRAILING = ".,;:!?"  # punctuation after a word that the end of a partial pass may add


class Engine(Protocol):
    """What a session needs from its model (``WhisperSTT``; tests use a fake)."""

    name: str
    timeout_s: float

    @property
    def busy(self) -> bool: ...

    def submit(self, fn: Callable[[], T], *, background: bool = False) -> Future[T] | None: ...

    def decode(self, audio: PCM, prompt: str = "", prefix: str = "") -> str: ...


@dataclass(frozen=True)
class StreamOptions:
    background: bool = True  # False: no work before finish() (a plain whole-utterance decode)
    # Commit passes that end in a pause, so later passes decode only the tail. Off by default:
    # a phrase decoded alone loses context; on 513 words (LibriVox, commands, spliced
    # sentences) the final transcript had 121 word errors committing phrases of 1 s or more,
    # 83 of 2 s, 69 of 3 s, and 57 without commits (whole-utterance decoding: 59).
    commit: bool = False
    pause_s: float = 0.12  # silence after speech that starts a pause pass
    # A pass is committed only if its audio ends with this much silence. Shorter (0.06 s)
    # made the final ready sooner but cut the soft ends of words: 9-12 word errors instead
    # of 5 in 71 (LibriVox).
    commit_gap_s: float = 0.12
    step_s: float = 0.8  # new audio between partial passes while speech goes on
    min_commit_s: float = 3.0  # shortest phrase committed on its own
    lead_s: float = 0.3  # audio kept before the first speech
    tail_s: float = 0.3  # audio kept after the last speech in the final pass
    gate_db: float = 10.0  # energy gate: speech is this far above the noise floor...
    gate_range_db: float = 35.0  # ...and no further than this below the loudest frame
    gate_min_dbfs: float = -55.0  # ...and louder than this
    # Force the words the last two partial passes agree on as the start of the pause and
    # final passes' transcripts. Off by default: it saved no time (CTranslate2 forces a
    # prefix one decoder step per token), and a word both partials got wrong would stay.
    force_prefix: bool = False

    def __post_init__(self) -> None:
        for name in ("pause_s", "commit_gap_s", "step_s", "min_commit_s", "lead_s", "tail_s"):
            if not 0.0 <= getattr(self, name) <= 30.0:
                raise ConfigError(f"stt.stream.{name}", "must be between 0 and 30 seconds")
        if self.step_s < 0.1:
            raise ConfigError("stt.stream.step_s", "must be at least 0.1 s")


@dataclass(frozen=True)
class _Result:
    start: int  # first sample decoded (the commit point when the pass started)
    end: int  # one past the last sample decoded
    speech_end: int  # end of the last speech before ``end`` when the pass started
    text: str


class WhisperStream:
    """Incremental transcription of one utterance at a time (see the module docstring)."""

    def __init__(self, stt: Engine, options: StreamOptions | None = None) -> None:
        self.options = options or StreamOptions()
        self._stt = stt
        self._pause = int(self.options.pause_s * SAMPLE_RATE)
        self._gap = int(self.options.commit_gap_s * SAMPLE_RATE)
        self._step = int(self.options.step_s * SAMPLE_RATE)
        self._min_commit = int(self.options.min_commit_s * SAMPLE_RATE)
        self._job: asyncio.Task[None] | None = None
        # Passes run since the session was made, by kind (for metrics and tests).
        self.passes: dict[PassKind, int] = {"pause": 0, "commit": 0, "partial": 0, "final": 0}
        self._buf = np.zeros(SAMPLE_RATE * 8, dtype=np.int16)
        self._generation = 0
        self.reset()

    # -- public API ------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the utterance; a pass still running for it is ignored when it returns."""
        self._generation += 1
        self._n = 0  # samples pushed
        self._speech_start: int | None = None
        self._speech_end = 0  # one past the last speech sample
        self._silence_start: int | None = None  # start of the silence run going on now
        self._pauses: list[tuple[int, int]] = []  # closed silences inside the speech
        self._cut = 0  # everything before this sample is committed
        self._committed: list[str] = []
        self._partials: list[str] = []  # texts of the last two partial passes over [cut, ...)
        self._result: _Result | None = None  # latest pass over [cut, ...)
        self._last_pass_end = 0
        self._floor = 0.0
        self._peak = -120.0
        self._job = None

    async def push(self, frame: PCM, speech: bool | None = None) -> None:
        """Add caller audio (16 kHz int16, any length). ``speech``: the caller's VAD verdict
        for this frame; None uses the session's own energy gate. Never waits for inference."""
        if frame.size == 0:
            return
        start = self._n
        self._append(frame)
        if speech is None:
            speech = self._gate(frame)
        if speech:
            if self._speech_start is None:
                self._speech_start = start
                self._cut = max(0, start - int(self.options.lead_s * SAMPLE_RATE))
            elif (self._silence_start is not None and self._silence_start > self._cut
                  and start - self._silence_start >= self._gap):
                self._pauses.append((self._silence_start, start))
            self._silence_start = None
            self._speech_end = self._n
        elif self._silence_start is None and self._speech_start is not None:
            self._silence_start = start
        if self.options.background and (self._job is None or self._job.done()):
            self._schedule()

    def partial(self) -> str:
        """The latest hypothesis: committed text plus the last pass over the rest."""
        parts = list(self._committed)
        if self._result is not None and self._result.start == self._cut:
            parts.append(self._result.text)
        return _join(parts)

    def stable_prefix(self) -> str:
        """The words a pause or final pass is told its transcript starts with: the longest
        common word prefix of the last two partial passes over the uncommitted audio, less
        its last word; "" when off, with fewer than two partials, or under 3 words."""
        if not self.options.force_prefix or len(self._partials) < 2:
            return ""
        older, newer = (text.split() for text in self._partials)
        common = 0
        for a, b in zip(older, newer, strict=False):
            if a.rstrip(_TRAILING) != b.rstrip(_TRAILING):
                break
            common += 1
        stable = newer[: max(0, common - 1)]  # the last agreed word may still change
        return " ".join(stable) if len(stable) >= _MIN_PREFIX_WORDS else ""

    async def idle(self) -> None:
        """Wait until this session's background pass, if one is running, has been applied."""
        job = self._job
        if job is not None and not job.done():
            await asyncio.shield(job)

    async def finish(self) -> str:
        """The final transcript of everything pushed so far.

        Free when a pause pass already covered the end of speech; otherwise it decodes the
        utterance (only the uncommitted tail when commits are on). The session stays usable:
        pushing more audio continues the same utterance (a speculative ``finish`` at a pause
        may be followed by more speech).
        """
        return await guarded(self._stt.name, self._stt.timeout_s, self._finish(), "transcript")

    # -- internals -------------------------------------------------------------------------
    async def _finish(self) -> str:
        await self.idle()  # the pass running may be the final one; never cancel it
        if self._speech_start is None or self._covered():
            return self.partial()
        end = min(self._n, self._speech_end + int(self.options.tail_s * SAMPLE_RATE))
        await self._run("final", self._cut, end, self._speech_end)
        return self.partial()

    def _append(self, frame: PCM) -> None:
        need = self._n + frame.size
        if need > self._buf.size:
            grown = np.zeros(max(need, 2 * self._buf.size), dtype=np.int16)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n:need] = frame
        self._n = need

    def _gate(self, frame: PCM) -> bool:
        """Energy gate over an adaptive noise floor: the floor falls at once to a quieter
        frame (not below -70 dBFS) and rises 6 dB a second; it starts at the first frame's
        level, or at -50 dBFS if that frame is louder. The turn engine's VAD, passed to
        ``push``, is better in noise; this gate keeps the session usable without one."""
        mean_sq = float(np.mean(np.square(frame, dtype=np.float32)))
        level = 10.0 * float(np.log10(mean_sq / (32768.0 * 32768.0) + 1e-12))
        seconds = frame.size / SAMPLE_RATE
        if self._n == frame.size:
            self._floor = min(level, -50.0)
        self._floor = max(min(self._floor + 6.0 * seconds, level), -70.0)
        self._peak = max(self._peak - 1.0 * seconds, level)
        o = self.options
        threshold = max(self._floor + o.gate_db, self._peak - o.gate_range_db, o.gate_min_dbfs)
        return level > threshold

    def _covered(self) -> bool:
        """Whether the latest pass (or the commits) already hold all the speech pushed."""
        if self._speech_end <= self._cut:
            return True
        r = self._result
        return r is not None and r.start == self._cut and r.end >= self._speech_end

    def _schedule(self) -> None:
        """Start at most one background pass, and only while the shared worker is idle."""
        if self._speech_start is None or self._stt.busy:
            return
        cut, now = self._cut, self._n
        if self._silence_start is not None:
            if now - self._silence_start >= self._pause and not self._covered():
                self._start("pause", cut, now, speech_end=self._speech_end)
            return
        if self.options.commit:
            for pause_start, pause_end in reversed(self._pauses):
                point = min(pause_start + self._gap, (pause_start + pause_end) // 2)
                if point - cut >= self._min_commit:
                    self._pauses.clear()
                    self._start("commit", cut, point, speech_end=pause_start)
                    return
        if now - self._last_pass_end >= self._step:
            self._start("partial", cut, now, speech_end=self._speech_end)

    def _start(self, kind: PassKind, start: int, end: int, *, speech_end: int) -> None:
        self._last_pass_end = end
        job = self._submit(kind, start, end, background=True)
        if job is not None:  # None: the worker became busy; skip this pass
            self._job = asyncio.get_running_loop().create_task(
                self._background(kind, job, start, end, speech_end), name=f"whisper-{kind}")

    async def _background(
        self, kind: PassKind, job: _Job, start: int, end: int, speech_end: int,
    ) -> None:
        try:
            self._apply(kind, job, start, end, speech_end, await asyncio.wrap_future(job[0]))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background %s pass failed", kind)

    async def _run(self, kind: PassKind, start: int, end: int, speech_end: int) -> None:
        job = self._submit(kind, start, end, background=False)
        assert job is not None
        self._apply(kind, job, start, end, speech_end, await asyncio.wrap_future(job[0]))

    def _submit(self, kind: PassKind, start: int, end: int, *, background: bool) -> _Job | None:
        """Queue the decoding of [start, end) on the worker now, with the committed text as
        the prompt and, for a pause or final pass, the stable words as a forced prefix; the
        session's generation is taken now too, so a reset voids the job."""
        audio, prompt = self._buf[start:end].copy(), _join(self._committed)
        prefix = self.stable_prefix() if kind in ("pause", "final") else ""

        def decode() -> str:
            if not log.isEnabledFor(logging.DEBUG):
                return self._stt.decode(audio, prompt, prefix)
            t0 = time.perf_counter()
            text = self._stt.decode(audio, prompt, prefix)
            log.debug("%s pass: %.2f s of audio in %.0f ms", kind, audio.size / SAMPLE_RATE,
                      1000 * (time.perf_counter() - t0))
            return text

        future = self._stt.submit(decode, background=background)
        if future is None:
            return None
        self.passes[kind] += 1
        return future, self._generation

    def _apply(
        self, kind: PassKind, job: _Job, start: int, end: int, speech_end: int, text: str,
    ) -> None:
        """Keep a pass's text; commit it when its audio ends in a pause (``speech_end``:
        where the speech in it ended)."""
        if job[1] != self._generation or start != self._cut:
            return  # reset, or a commit moved the start while this pass ran
        self._result = _Result(start, end, speech_end, text)
        if kind == "partial":
            self._partials = [*self._partials[-1:], text]
        self._try_commit()

    def _try_commit(self) -> None:
        """Commit the latest pass if its audio ends with ``commit_gap_s`` of silence or more
        (the speaker has moved past it, so that audio will not change)."""
        r = self._result
        if (not self.options.commit or r is None or r.start != self._cut
                or r.end - r.start < self._min_commit or r.speech_end <= r.start
                or r.end - r.speech_end < self._gap):
            return
        self._committed.append(r.text)
        self._cut = r.end
        self._partials = []
        self._pauses = [p for p in self._pauses if p[0] >= r.end]
        self._result = None
        log.debug("committed %.2f s of audio", (r.end - r.start) / SAMPLE_RATE)


def _join(parts: list[str]) -> str:
    return " ".join(p for p in (s.strip() for s in parts) if p)
