"""The provider contracts.

A provider implements one method (``_transcribe``, ``_stream``, ``_synthesize``,
or a VAD stream's ``_probability``). The public method of the base class owns
what every provider needs the same way: a time limit on the first result,
translation of unexpected errors into :class:`ProviderError`, and a debug log.
Blocking engines (local models) run in worker threads so the event loop never
waits on inference. An LLM only ever receives the caller's words with personal data
redacted (:mod:`rejoinder.core.redact`), unless its ``redact`` is switched off.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeVar, final

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE
from rejoinder.core.errors import ProviderError, ProviderTimeout
from rejoinder.core.redact import redact as redact_text

log = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]
T = TypeVar("T")


async def guarded(name: str, timeout_s: float, call: Awaitable[T], what: str) -> T:
    """Await one provider answer within ``timeout_s``; anything unexpected becomes a
    :class:`ProviderError` of provider ``name`` (``what``: the answer, for messages)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except TimeoutError as exc:
        raise ProviderTimeout(name, f"no {what} within {timeout_s} s") from exc
    except (ProviderError, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise ProviderError(name, f"{what} failed: {exc!r}") from exc


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    interrupted: bool = False  # an assistant reply the caller cut off; content is what they heard


class VADStream(ABC):
    """Per-call voice activity state. ``push`` takes 16 kHz frames of any length.

    A window whose every sample is within +-``SILENT_PEAK`` (-66 dBFS: digital silence, a
    muted or noise-suppressed microphone) has no speech, and the model is not run on it:
    most of a call is the caller listening. After ``STALE_WINDOWS`` such windows the
    model's state is reset before the next sound, as if the stream had just begun.
    """

    window: int  # samples the model looks at per decision
    SILENT_PEAK = 16
    STALE_WINDOWS = 16

    def __init__(self) -> None:
        self._buf = np.zeros(0, dtype=np.int16)
        self._last = 0.0
        self._skipped = 0
        self.windows = 0  # windows decided, by the model or as silence
        self.skipped = 0  # of which silent, without the model

    def push(self, frame: PCM) -> float:
        """Speech probability of the latest complete window (blocking; cheap)."""
        buf = np.concatenate((self._buf, frame)) if self._buf.size else frame
        n = len(buf) // self.window
        for i in range(n):
            window = buf[i * self.window:(i + 1) * self.window]
            self.windows += 1
            # max/min, not abs(): no temporary, and -32768 has no int16 absolute value
            if window.min() >= -self.SILENT_PEAK and window.max() <= self.SILENT_PEAK:
                self._last = 0.0
                self._skipped += 1
                self.skipped += 1
                continue
            if self._skipped >= self.STALE_WINDOWS:
                self._reset()
            self._skipped = 0
            self._last = self._probability(window)
        self._buf = buf[n * self.window:]
        return self._last

    @abstractmethod
    def _probability(self, window: PCM) -> float: ...

    def _reset(self) -> None:  # noqa: B027  optional: only models with state override it
        """Forget the audio so far (the model's recurrent state), if the model has any."""


class VAD(ABC):
    """A voice activity model, loaded once; each call gets its own stream."""

    name = "vad"

    @abstractmethod
    def stream(self) -> VADStream: ...


class STTStream(Protocol):
    """One caller's utterance being transcribed while it is spoken.

    The turn engine pushes every frame of the utterance (with its VAD verdict), asks for
    ``finish()`` when the caller pauses (it may be asked again if they go on: the session
    keeps the whole utterance), and calls ``reset()`` once a reply to it is committed.
    """

    async def push(self, frame: PCM, speech: bool | None = None) -> None: ...

    async def finish(self) -> str: ...

    def partial(self) -> str:
        """The words heard so far, while the caller still speaks ("" if the engine only
        transcribes at ``finish()``)."""
        ...

    def reset(self) -> None: ...


class BufferedSTTStream:
    """The default session: keep the audio, transcribe it whole at ``finish()``.

    Like an incremental engine, it answers a second ``finish()`` without new work when no
    speech came since the first (only silence was added).
    """

    def __init__(self, stt: STT) -> None:
        self._stt = stt
        self._frames: list[PCM] = []
        self._speech = 0  # speech frames pushed
        self._final: str | None = None  # the transcript, while no speech came after it

    async def push(self, frame: PCM, speech: bool | None = None) -> None:
        self._frames.append(frame)
        if speech or speech is None:
            self._speech += 1
            self._final = None

    async def finish(self) -> str:
        if self._final is not None:
            return self._final
        speech = self._speech
        audio = np.concatenate(self._frames) if self._frames else np.zeros(0, np.int16)
        text = await self._stt.transcribe(audio)
        if speech == self._speech:
            self._final = text
        return text

    def partial(self) -> str:
        return ""

    def reset(self) -> None:
        self._frames = []
        self._speech = 0
        self._final = None


class STT(ABC):
    """Speech to text for one finished utterance (16 kHz mono int16)."""

    #: Whether transcripts end with closing punctuation when the recogniser hears a finished
    #: sentence (Whisper does); the turn engine then reads a long one without it as unfinished.
    punctuates = False

    name = "stt"
    timeout_s = 10.0

    async def transcribe(self, audio: PCM) -> str:
        text = await guarded(self.name, self.timeout_s, self._transcribe(audio), "transcript")
        return text.strip()

    @abstractmethod
    async def _transcribe(self, audio: PCM) -> str: ...

    def stream(self) -> STTStream:
        """A session for one caller (engines that transcribe incrementally override this)."""
        return BufferedSTTStream(self)

    async def warm(self) -> None:
        await self.transcribe(np.zeros(SAMPLE_RATE // 2, dtype=np.int16))


class TurnModel(ABC):
    """An end-of-turn model: P(the caller has finished) from the audio of their turn so far."""

    name = "turn-model"
    timeout_s = 1.0

    async def probability(self, audio: PCM) -> float:
        return float(await guarded(self.name, self.timeout_s, self._probability(audio),
                                   "end-of-turn answer"))

    @abstractmethod
    async def _probability(self, audio: PCM) -> float: ...


class _Streaming:
    """Shared first-item time limit for streaming providers."""

    name = "provider"
    first_item_timeout_s = 10.0

    async def _guard(self, items: AsyncIterator[object], what: str) -> AsyncGenerator[object, None]:
        try:
            first = True
            while True:
                try:
                    if first:
                        async with asyncio.timeout(self.first_item_timeout_s):
                            item = await anext(items)
                        first = False
                    else:
                        item = await anext(items)
                except StopAsyncIteration:
                    return
                yield item
        except TimeoutError as exc:
            raise ProviderTimeout(
                self.name, f"no {what} within {self.first_item_timeout_s} s") from exc
        except (ProviderError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise ProviderError(self.name, f"{what} stream failed: {exc!r}") from exc
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()


class LLM(_Streaming):
    """A chat model that streams text deltas.

    Both ways in, ``stream`` and ``prefill``, are final (implementations write ``_stream``
    and ``_prefill``) and pass the messages through :meth:`outgoing` first. With ``redact``
    on (the default; ``llm.redact`` in the configuration), personal data in the caller's
    messages is replaced there by placeholders, so no implementation ever sees it. System
    and assistant messages are the agent's own text (the operator's prompt, and replies
    written from redacted words) and pass unchanged. Redaction is deterministic: the same
    history always makes the same prompt, and a prompt cache keeps its prefix turn to turn.
    """

    name = "llm"
    redact = True  # replace personal data in user messages before the model sees them
    turn_end_timeout_s = 0.5  # ``turn_end_p`` is on the way to the reply: short, or nothing

    @final
    def outgoing(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        """``messages`` as the provider receives them."""
        if not self.redact:
            return messages
        out: list[ChatMessage] = []
        for m in messages:
            if m.role == "user":
                text = redact_text(m.content)
                if text != m.content:
                    m = replace(m, content=text)
            out.append(m)
        return out

    @final
    async def stream(self, messages: list[ChatMessage]) -> AsyncGenerator[str, None]:
        messages = self.outgoing(messages)
        async with aclosing(self._guard(self._stream(messages), "token")) as deltas:
            async for delta in deltas:  # closed with this generator: the request ends now
                yield delta  # type: ignore[misc]

    @abstractmethod
    def _stream(self, messages: list[ChatMessage]) -> AsyncIterator[str]: ...

    async def warm(self, messages: list[ChatMessage]) -> None:
        """Evaluate ``messages`` (the system prompt) so later calls reuse the prefix."""
        stream = self.stream(messages)
        try:
            async for _ in stream:
                break
        finally:
            await stream.aclose()  # now, not when the generator is collected: stops decoding

    @final
    async def prefill(self, messages: list[ChatMessage]) -> None:
        """Read ``messages`` ahead of the real request (whose prompt will start the same:
        the caller's words so far), for models that keep a prompt cache; the rest ignore
        it. Called while the caller still speaks. Implementations override ``_prefill``."""
        await self._prefill(self.outgoing(messages))

    async def _prefill(self, messages: list[ChatMessage]) -> None:
        return None

    @final
    async def turn_end_p(self, messages: list[ChatMessage]) -> float | None:
        """P(the last message, the caller's, is a whole turn): the model's own probability
        that the message ends where its text ends (its end-of-message token comes next).
        None from models that cannot tell (the default). Implementations override
        ``_turn_end_p``; it runs in the same slot as the reply that follows, so it must be
        short (one token's worth of work over a cached prefix)."""
        return await guarded(self.name, self.turn_end_timeout_s,
                             self._turn_end_p(self.outgoing(messages)), "turn end")

    async def _turn_end_p(self, messages: list[ChatMessage]) -> float | None:
        return None


class TTS(_Streaming):
    """Text to speech that streams int16 mono chunks at ``sample_rate``."""

    name = "tts"
    sample_rate = 22_050

    async def synthesize(self, text: str) -> AsyncIterator[PCM]:
        async with aclosing(self._guard(self._synthesize(text), "audio")) as chunks:
            async for chunk in chunks:
                yield chunk  # type: ignore[misc]

    @abstractmethod
    def _synthesize(self, text: str) -> AsyncIterator[PCM]: ...

    def holds(self, text: str) -> bool:
        """Whether ``text`` is ready to play at once, with no synthesis (a phrase cache)."""
        return False

    async def warm(self) -> None:
        async for _ in self.synthesize("Hello."):
            pass


@dataclass
class Stack:
    """The providers one server uses, loaded once and shared by every call."""

    vad: VAD
    stt: STT
    llm: LLM
    tts: TTS
    turn: TurnModel | None = None  # None: the end of a turn is taken from silence alone

    async def warm(self, system: list[ChatMessage]) -> None:
        await self.stt.warm()
        await self.tts.warm()
        await self.llm.warm(system)
        if self.turn is not None:
            await self.turn.probability(np.zeros(SAMPLE_RATE, dtype=np.int16))

    async def close(self) -> None:
        for p in (self.vad, self.stt, self.llm, self.tts, self.turn):
            close = getattr(p, "close", None)
            if close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
