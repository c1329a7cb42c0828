"""Provider fallback against the simulated cloud: a primary and a fallback service, each its own
``python -m rejoinder.cloudsim`` process, and faults on the primary.

    python -m rejoinder.bench.fallback [--turns 10]

Per fault it sends ``--turns`` requests through a chain (primary first, then the fallback)
and reports the turns answered (a whole reply, no clause twice), and the time each took
against the same requests with a healthy primary: first text (LLM) or first audio (TTS),
and the whole reply. Faults: the primary drops every stream midway, never answers (the
chain's first-item limit, 1 s, applies), or is killed with SIGKILL midway through the first
reply (the later requests find it gone; its breaker opens after 3 failures).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import statistics
import time
from collections.abc import Awaitable, Callable

from rejoinder.cloudsim.process import start_cloudsim, stop_cloudsim
from rejoinder.providers.base import ChatMessage
from rejoinder.providers.breaker import BreakerOptions, CircuitBreaker
from rejoinder.providers.fallback import Backend, FallbackLLM, FallbackTTS
from rejoinder.providers.openai.llm import OpenAILLM
from rejoinder.providers.remote.tts import RemoteTTS
from rejoinder.turn.clauses import split_clauses

REPLY = "Sure, the salon opens at nine. On Saturdays it opens at ten, and closes at four."
ASK = [ChatMessage("user", "when do you open")]
FIRST_S, IDLE_S = 1.0, 1.0
SIM: dict[str, float | int | str] = {
    "llm_ttft": 0.2, "llm_tokens_per_s": 20, "llm_reply": REPLY, "tts_ttfb": 0.1,
    "tts_rtf": 0.5, "tts_chunk": 0.1}

Turn = tuple[bool, float, float]  # answered whole, first item (s), whole reply (s)


def _breaker(name: str) -> CircuitBreaker:
    return CircuitBreaker("x", name, BreakerOptions(failures=3, cooldown_s=30.0))


async def _llm_turn(llm: FallbackLLM, on_first: Callable[[], None]) -> Turn:
    start = time.monotonic()
    first = 0.0
    parts: list[str] = []
    try:
        async for item in llm.stream(ASK):
            if not parts:
                first = time.monotonic() - start
                on_first()
            parts.append(str(item))
    except Exception:
        return False, 0.0, time.monotonic() - start
    text = "".join(parts)
    clauses = split_clauses(text)
    whole = text.strip() == REPLY and len(clauses) == len(set(clauses))
    return whole, first, time.monotonic() - start


async def _tts_turn(tts: FallbackTTS, on_first: Callable[[], None]) -> Turn:
    start = time.monotonic()
    first = 0.0
    samples = 0
    try:
        async for chunk in tts.synthesize("one two three four five six"):
            if not samples:
                first = time.monotonic() - start
                on_first()
            samples += len(chunk)
    except Exception:
        return False, 0.0, time.monotonic() - start
    return samples > 0, first, time.monotonic() - start


def _llm_chain(primary: str, fallback: str) -> FallbackLLM:
    def one(url: str) -> OpenAILLM:
        llm = OpenAILLM(url + "/v1", "cloudsim", first_token_timeout_s=FIRST_S)
        llm.stream_idle_timeout_s = IDLE_S
        return llm
    return FallbackLLM([Backend("primary", one(primary), breaker=_breaker("primary")),
                        Backend("fallback", one(fallback), breaker=_breaker("fallback"))])


def _tts_chain(primary: str, fallback: str) -> FallbackTTS:
    def one(url: str) -> RemoteTTS:
        tts = RemoteTTS(url, sample_rate=24_000, first_audio_timeout_s=FIRST_S)
        tts.stream_idle_timeout_s = IDLE_S
        return tts
    return FallbackTTS([Backend("primary", one(primary), breaker=_breaker("primary")),
                        Backend("fallback", one(fallback), breaker=_breaker("fallback"))])


async def _run(kind: str, fault: str, turns: int) -> list[Turn]:
    extra: dict[str, float | int | str] = {}
    if fault == "drop":
        extra[f"{kind}_drop_rate"] = 1.0
    elif fault == "timeout":
        extra[f"{kind}_timeout_rate"] = 1.0
    primary, p_url = await asyncio.to_thread(lambda: start_cloudsim(
        "fast", **SIM, **extra))  # type: ignore[arg-type]  # overrides, not host
    fallback, f_url = await asyncio.to_thread(lambda: start_cloudsim(
        "fast", **SIM))  # type: ignore[arg-type]
    killed = False

    def on_first() -> None:
        nonlocal killed
        if fault == "killed" and not killed:
            os.kill(primary.pid, signal.SIGKILL)  # midway through the first reply
            killed = True

    try:
        chain: FallbackLLM | FallbackTTS
        if kind == "llm":
            chain = llm = _llm_chain(p_url, f_url)
            run: Callable[[], Awaitable[Turn]] = lambda: _llm_turn(llm, on_first)  # noqa: E731
        else:
            chain = tts = _tts_chain(p_url, f_url)
            run = lambda: _tts_turn(tts, on_first)  # noqa: E731
        try:
            return [await run() for _ in range(turns)]
        finally:
            await chain.close()
    finally:
        stop_cloudsim(primary)
        stop_cloudsim(fallback)


def _added(values: list[float], base: list[float]) -> str:
    """Median and worst time added against the healthy primary's median, ms."""
    mid = statistics.median(base)
    return f"{(statistics.median(values) - mid) * 1000:+.0f} / {(max(values) - mid) * 1000:+.0f}"


async def main(turns: int) -> None:
    print("| provider | fault on the primary | turns answered | healthy: first item / whole, "
          "ms | added to the first item, median / worst, ms | added to the whole reply, "
          "median / worst, ms |")
    print("|---|---|---|---|---|---|")
    for kind in ("llm", "tts"):
        base: list[Turn] = []
        for fault in ("none", "drop", "timeout", "killed"):
            results = await _run(kind, fault, turns)
            if fault == "none":
                base = results
            answered = sum(ok for ok, _, _ in results)
            firsts = [f for ok, f, _ in results if ok]
            wholes = [w for ok, _, w in results if ok]
            healthy = (f"{statistics.median([f for _, f, _ in base]) * 1000:.0f} / "
                       f"{statistics.median([w for _, _, w in base]) * 1000:.0f}")
            print(f"| {kind} | {fault} | {answered}/{turns} | {healthy} | "
                  f"{_added(firsts, [f for _, f, _ in base])} | "
                  f"{_added(wholes, [w for _, _, w in base])} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=10)
    logging.basicConfig(level=logging.ERROR)  # the chains log every fallback as a warning
    asyncio.run(main(parser.parse_args().turns))
