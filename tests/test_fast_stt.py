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
        self.calls: list[tuple[float, str]] = []  # (seconds of audio, prompt)
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

    def decode(self, audio: np.ndarray, prompt: str = "") -> str:
        self.calls.append((len(audio) / SAMPLE_RATE, prompt))
        time.sleep(self.delay_s)
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
    seconds, prompt = engine.calls[-1]
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
    seconds, prompt = engine.calls[-1]
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
