"""Whisper with a window sized to the audio, and the streaming session (whisper_stream.py).

The first tests drive a session with a fake engine (fast, exact); the ``slow`` ones use the
real tiny.en model.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rejoinder.core.audio import FRAME_SAMPLES, SAMPLE_RATE, read_wav, split_frames
from rejoinder.providers.local.whisper_stream import StreamOptions, WhisperStream
from rejoinder.testing.loop import LoopTicks
from rejoinder.testing.wer import word_errors, words

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
DASHWOOD = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav"  # 7.1 s
ILL_DISPOSED = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"
AMIABLE = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0930.wav"
GOFORWARD = Path("/usr/share/pocketsphinx/test/data/goforward.raw")


# --- a fake engine: a "word" is a run of one constant sample value ------------------------

class FakeEngine:
    """Decodes runs of equal non-zero samples as words ``w<value>``; one worker thread."""

    name = "fake"
    timeout_s = 5.0

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[tuple[float, str, str]] = []  # (seconds of audio, prompt, prefix)
        self.script: list[str] = []  # texts to return instead, in order (then the real decode)
        self.pending = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1)

    @property
    def busy(self) -> bool:
        return self.pending > 0

    def submit(self, fn: Callable[[], Any], *, background: bool = False) -> Future[Any] | None:
        with self._lock:
            if background and self.pending:
                return None
            self.pending += 1
        future = self._pool.submit(fn)
        future.add_done_callback(lambda _: self._done())
        return future

    def _done(self) -> None:
        with self._lock:
            self.pending -= 1

    def decode(self, audio: np.ndarray, prompt: str = "", prefix: str = "") -> str:
        self.calls.append((len(audio) / SAMPLE_RATE, prompt, prefix))
        time.sleep(self.delay_s)
        if self.script:
            return self.script.pop(0)
        edges = np.flatnonzero(np.diff(audio.astype(np.int32))) + 1
        runs = np.split(audio, edges)
        return " ".join(f"w{int(r[0])}" for r in runs if r.size and r[0] != 0)


def word(value: int, seconds: float) -> np.ndarray:
    return np.full(int(seconds * SAMPLE_RATE), value, dtype=np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


async def feed(session: WhisperStream, pcm: np.ndarray) -> None:
    """Push 20 ms frames, letting each background pass finish (deterministic)."""
    for frame in split_frames(pcm, FRAME_SAMPLES):
        await session.push(frame)
        await session.idle()


async def test_without_commits_the_final_pass_decodes_the_whole_utterance() -> None:
    engine = FakeEngine()
    session = WhisperStream(engine)
    await feed(session, np.concatenate([word(1100, 1.2), silence(0.3), word(1200, 0.8)]))
    assert await session.finish() == "w1100 w1200"
    seconds, prompt, _prefix = engine.calls[-1]
    assert prompt == "" and seconds > 2.0


async def test_a_pause_pass_becomes_the_final_transcript() -> None:
    engine = FakeEngine()
    session = WhisperStream(engine)
    await feed(session, np.concatenate([silence(0.2), word(1100, 0.4), word(1200, 0.3)]))
    await feed(session, silence(0.3))
    assert session.passes["pause"] == 1
    calls = len(engine.calls)
    assert await session.finish() == "w1100 w1200"
    assert len(engine.calls) == calls and session.passes["final"] == 0  # no inference left
    assert await session.finish() == "w1100 w1200"  # idempotent


async def test_audio_before_a_pause_is_committed_and_the_final_pass_decodes_only_the_tail() -> None:
    engine = FakeEngine()
    session = WhisperStream(engine, StreamOptions(commit=True, min_commit_s=1.0))
    await feed(session, np.concatenate([word(1100, 1.2), silence(0.3), word(1200, 0.8)]))
    assert session.partial().startswith("w1100")
    text = await session.finish()
    assert text == "w1100 w1200"
    seconds, prompt, _prefix = engine.calls[-1]
    assert prompt == "w1100"  # the committed text is the prompt...
    assert seconds < 1.4  # ...and only the audio after the pause is decoded again


async def test_partials_while_speech_goes_on() -> None:
    engine = FakeEngine()
    session = WhisperStream(engine, StreamOptions(step_s=0.5))
    await feed(session, np.concatenate([word(1100, 1.0), word(1200, 1.1)]))
    assert session.passes["partial"] >= 3
    assert session.partial() == "w1100 w1200"


async def test_no_background_work_while_the_worker_is_busy() -> None:
    engine = FakeEngine()
    engine.pending = 1  # another call's final transcription is running
    session = WhisperStream(engine)
    await feed(session, np.concatenate([word(1100, 1.2), silence(0.3)]))
    assert engine.calls == [] and session.partial() == ""
    engine.pending = 0
    assert await session.finish() == "w1100"
    assert session.passes["final"] == 1


async def test_push_never_waits_for_inference() -> None:
    engine = FakeEngine(delay_s=0.3)
    session = WhisperStream(engine, StreamOptions(step_s=0.1))
    frames = split_frames(np.concatenate([word(1100, 1.0), silence(0.3)]), FRAME_SAMPLES)
    started = time.perf_counter()
    for frame in frames:
        await session.push(frame)
    assert time.perf_counter() - started < 0.2  # 65 pushes while 0.3 s passes run
    assert await session.finish() == "w1100"


async def test_reset_drops_the_pass_in_flight() -> None:
    engine = FakeEngine(delay_s=0.1)
    session = WhisperStream(engine, StreamOptions(step_s=0.2))
    for frame in split_frames(word(1100, 0.4), FRAME_SAMPLES):
        await session.push(frame)
    session.reset()
    await asyncio.sleep(0.3)
    assert session.partial() == ""
    assert await session.finish() == ""  # nothing pushed since the reset
    await feed(session, np.concatenate([word(1300, 0.5), silence(0.2)]))
    assert await session.finish() == "w1300"


async def test_the_callers_vad_overrides_the_energy_gate() -> None:
    session = WhisperStream(FakeEngine())
    for frame in split_frames(word(1100, 0.5), FRAME_SAMPLES):
        await session.push(frame, speech=False)  # loud, but the VAD says it is noise
    assert await session.finish() == ""


# --- the stable words of the partial passes, forced as the start of the pause/final pass ---

def speech(seconds: float) -> np.ndarray:
    """One long loud "word" (the gate's floor takes 6 s to reach it); the text the fake
    engine makes of it does not matter here."""
    return word(20000, seconds)


async def test_the_pause_pass_is_given_the_words_the_last_two_partials_agree_on() -> None:
    engine = FakeEngine()
    engine.script = ["One two three four five", "One, two three four five six",
                     "One two three four five sicks seven."]
    session = WhisperStream(engine, StreamOptions(step_s=0.8, force_prefix=True))
    await feed(session, speech(2.5))  # partial passes at 0.8, 1.6 and 2.4 s
    assert session.passes["partial"] == 3
    assert all(prefix == "" for _, _, prefix in engine.calls)  # none for partial passes
    # The second and third partials agree on "One two three four five" ("One," and "One"
    # are the same word; the newer one is kept); the last agreed word is dropped as a margin.
    assert session.stable_prefix() == "One two three four"
    await feed(session, silence(0.2))
    assert session.passes["pause"] == 1
    assert engine.calls[-1][2] == "One two three four"
    engine.script = []
    assert await session.finish() == "w20000"  # the pause pass covered the speech


async def test_the_final_pass_is_given_the_stable_prefix_too() -> None:
    engine = FakeEngine()
    engine.script = ["a b c d e f", "a b c d e f g", "a b c d e x y"]
    session = WhisperStream(engine, StreamOptions(step_s=0.8, force_prefix=True))
    engine.pending = 1  # no pause pass: the worker is busy when the silence starts
    await feed(session, speech(0.02))
    engine.pending = 0
    await feed(session, speech(2.5))
    assert [c[2] for c in engine.calls] == ["", "", ""]
    engine.pending = 1
    await feed(session, silence(0.2))
    engine.pending = 0
    assert session.passes["pause"] == 0
    assert await session.finish() == "w20000"
    assert session.passes["final"] == 1
    assert engine.calls[-1][2] == "a b c d"  # "a b c d e" agreed, less its last word


async def test_no_prefix_from_fewer_than_two_partials_or_under_three_words() -> None:
    engine = FakeEngine()
    engine.script = ["One two three four"]
    session = WhisperStream(engine, StreamOptions(step_s=0.8, force_prefix=True))
    await feed(session, np.concatenate([speech(1.0), silence(0.2)]))  # one partial pass
    assert session.passes["partial"] == 1 and session.passes["pause"] == 1
    assert engine.calls[-1][2] == ""

    session.reset()
    engine.script = ["x", "One two three", "One two three four"]
    await feed(session, np.concatenate([speech(2.5), silence(0.2)]))
    assert session.passes["partial"] == 4  # one before the reset, three after
    assert engine.calls[-1][2] == ""  # "One two three" agreed: two words once the last goes

    session.reset()  # the partials of the utterance before are forgotten
    engine.script = ["One two three four five"]
    await feed(session, np.concatenate([speech(1.0), silence(0.2)]))
    assert engine.calls[-1][2] == ""


async def test_no_prefix_when_the_option_is_off_as_by_default() -> None:
    engine = FakeEngine()
    engine.script = ["One two three four five", "One two three four five six"] * 2
    session = WhisperStream(engine)
    await feed(session, np.concatenate([speech(2.5), silence(0.2)]))
    assert session.passes["partial"] == 3 and session.passes["pause"] == 1
    assert all(prefix == "" for _, _, prefix in engine.calls)


# --- the real model ---------------------------------------------------------------------

def reference(stem: str) -> list[str]:
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        m = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
        if m and m.group(2) == stem:
            return words(m.group(1))
    raise KeyError(stem)


@pytest.fixture(scope="module")
def stt() -> Iterator[Any]:
    from rejoinder.providers.local.whisper import WhisperSTT

    model = WhisperSTT()
    yield model
    model.close()


@pytest.mark.slow
async def test_streamed_transcript_of_a_librivox_sentence(stt: Any) -> None:
    pcm = read_wav(DASHWOOD)
    session = stt.stream()
    longest_push = 0.0
    async with LoopTicks() as ticks:
        for frame in split_frames(pcm, FRAME_SAMPLES):
            t0 = time.perf_counter()
            await session.push(frame)
            longest_push = max(longest_push, time.perf_counter() - t0)
            await asyncio.sleep(0.005)  # 4x real time: background passes run meanwhile
        text = await session.finish()

    assert sum(session.passes[k] for k in ("pause", "commit", "partial")) >= 2
    hyp = words(text)
    whole = words(await stt.transcribe(pcm))
    assert word_errors(reference(DASHWOOD.stem), hyp) <= 2 or word_errors(whole, hyp) <= 1, text
    # Inference runs on the worker thread: the loop keeps ticking and push() returns at once.
    assert ticks.share >= 0.5
    assert longest_push < 0.05


@pytest.mark.slow
async def test_the_final_transcript_is_ready_after_a_pause(stt: Any) -> None:
    pcm = read_wav(ILL_DISPOSED)
    session = stt.stream()
    await feed(session, pcm)
    await feed(session, silence(0.3))
    text = await session.finish()
    assert session.passes["final"] == 0
    assert word_errors(reference(ILL_DISPOSED.stem), words(text)) <= 2, text
    session.reset()
    assert session.partial() == ""
    await feed(session, np.concatenate([read_wav(AMIABLE), silence(0.3)]))
    assert words(await session.finish()) == reference(AMIABLE.stem)


@pytest.mark.slow
async def test_a_forced_prefix_is_kept_once_and_the_rest_is_decoded(stt: Any) -> None:
    pcm = read_wav(DASHWOOD)
    prefix = "And Mr. John Dashwood had"  # the first reference words, as Whisper writes them
    future = stt.submit(lambda: stt.decode(pcm, prefix=prefix))
    text = await asyncio.wrap_future(future)
    assert text.startswith(prefix) and text.count("Dashwood") == 1, text
    assert stt.last_tokens[0] == len(stt._tokenizer.encode(" " + prefix)), stt.last_tokens
    rest = words(text)[len(words(prefix)):]
    assert word_errors(reference(DASHWOOD.stem)[5:], rest) <= 1, text


@pytest.mark.slow
async def test_a_short_window_does_not_loop(stt: Any) -> None:
    # Without the silence spliced after the encoder output, tiny.en read this 2.8 s command
    # as "go forward 10 meters. Go forward 10 meters. Go forward ..." on a 4 s window.
    pcm = np.fromfile(GOFORWARD, dtype="<i2").astype(np.int16)
    hyp = words(await stt.transcribe(pcm))
    assert hyp[:2] == ["go", "forward"] and hyp[-1] == "meters" and len(hyp) <= 4, hyp


@pytest.mark.slow
async def test_the_fitted_window_matches_the_full_one() -> None:
    from rejoinder.providers.local.whisper import WhisperOptions, WhisperSTT

    full = WhisperSTT(WhisperOptions(window="full", threads=1))
    fit = WhisperSTT(WhisperOptions(threads=1))
    try:
        for path in (AMIABLE, ILL_DISPOSED):
            pcm = read_wav(path)
            a, b = words(await full.transcribe(pcm)), words(await fit.transcribe(pcm))
            assert word_errors(a, b) <= 1, (a, b)
    finally:
        full.close()
        fit.close()
