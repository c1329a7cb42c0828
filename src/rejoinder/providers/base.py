"""The provider contracts.

A provider implements one method (``_transcribe``, ``_stream``, ``_synthesize``,
or a VAD stream's ``_probability``). The public method of the base class owns
what every provider needs the same way: a time limit on the first result and on
every gap between results after it (``stream_idle_timeout_s``: a stream that stalls
midway raises :class:`ProviderTimeout` instead of leaving the caller in silence),
translation of unexpected errors into :class:`ProviderError` tagged with the
provider's ``kind`` (so that a caller is told ``llm_timeout``, never the message),
and a debug log.
Blocking engines (local models) run in worker threads so the event loop never
waits on inference. An LLM only ever receives the caller's words with personal data
redacted (:mod:`rejoinder.core.redact`), unless its ``redact`` is switched off.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, final

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE
from rejoinder.core.errors import ProviderError, ProviderTimeout
from rejoinder.core.redact import redact as redact_text
from rejoinder.tools.base import Tool, ToolCall

if TYPE_CHECKING:
    from rejoinder.guardrails import Guardrails
    from rejoinder.tools.box import Toolbox

log = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant", "tool"]
#: What an LLM stream yields: a text delta, or a whole tool call (arguments assembled).
StreamItem = str | ToolCall
T = TypeVar("T")


#: Default longest gap between two items of a provider stream (config: ``stream_idle_timeout_s``
#: of ``[llm]``, ``[stt]``, ``[tts]``). A healthy service streams many items a second.
STREAM_IDLE_TIMEOUT_S = 5.0


def _tagged(exc: ProviderError, kind: str) -> ProviderError:
    """``exc`` with its provider ``kind`` set, unless an inner provider set it already."""
    if exc.kind == ProviderError.kind:
        exc.kind = kind
    return exc


async def guarded(name: str, timeout_s: float, call: Awaitable[T], what: str, *,
                  kind: str = ProviderError.kind) -> T:
    """Await one provider answer within ``timeout_s``; anything unexpected becomes a
    :class:`ProviderError` of provider ``name`` and ``kind`` (``what``: the answer, for
    messages)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except TimeoutError as exc:
        raise _tagged(ProviderTimeout(name, f"no {what} within {timeout_s} s"), kind) from exc
    except ProviderError as exc:
        _tagged(exc, kind)
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise _tagged(ProviderError(name, f"{what} failed: {exc!r}"), kind) from exc


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    interrupted: bool = False  # an assistant reply the caller cut off; content is what they heard
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant message: the calls it asked for
    tool_call_id: str | None = None  # a "tool" message: the call whose result (JSON) it holds


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
    ``push`` never waits for inference; the engine gets its session from
    :meth:`STT.session`, which puts the time limit on ``finish()``.
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


class _GuardedSTTStream:
    """A provider's session with the base class's limit on ``finish()``: the transcript
    comes within ``stream_idle_timeout_s`` of the request, or :class:`ProviderTimeout`."""

    def __init__(self, inner: STTStream, stt: STT) -> None:
        self.inner = inner
        self._stt = stt

    async def push(self, frame: PCM, speech: bool | None = None) -> None:
        await self.inner.push(frame, speech)

    async def finish(self) -> str:
        stt = self._stt
        return await guarded(stt.name, stt.stream_idle_timeout_s, self.inner.finish(),
                             "transcript", kind=stt.kind)

    def partial(self) -> str:
        return self.inner.partial()

    def reset(self) -> None:
        self.inner.reset()


class STT(ABC):
    """Speech to text for one finished utterance (16 kHz mono int16)."""

    #: Whether transcripts end with closing punctuation when the recogniser hears a finished
    #: sentence (Whisper does); the turn engine then reads a long one without it as unfinished.
    punctuates = False

    name = "stt"
    kind = "stt"
    timeout_s = 10.0  # one whole-utterance request
    #: A session's final transcript, from the moment it is asked for (``finish()``): the
    #: caller is waiting in silence for it.
    stream_idle_timeout_s = STREAM_IDLE_TIMEOUT_S

    async def transcribe(self, audio: PCM) -> str:
        text = await guarded(self.name, self.timeout_s, self._transcribe(audio), "transcript",
                             kind=self.kind)
        return text.strip()

    @abstractmethod
    async def _transcribe(self, audio: PCM) -> str: ...

    def stream(self) -> STTStream:
        """A session for one caller (engines that transcribe incrementally override this)."""
        return BufferedSTTStream(self)

    @final
    def session(self) -> STTStream:
        """:meth:`stream` as the turn engine uses it: ``finish()`` time-limited
        (``stream_idle_timeout_s``), its errors translated and tagged ``stt``."""
        return _GuardedSTTStream(self.stream(), self)

    async def warm(self) -> None:
        await self.transcribe(np.zeros(SAMPLE_RATE // 2, dtype=np.int16))


class TurnModel(ABC):
    """An end-of-turn model: P(the caller has finished) from the audio of their turn so far."""

    name = "turn-model"
    kind = "turn"
    timeout_s = 1.0

    async def probability(self, audio: PCM) -> float:
        return float(await guarded(self.name, self.timeout_s, self._probability(audio),
                                   "end-of-turn answer", kind=self.kind))

    @abstractmethod
    async def _probability(self, audio: PCM) -> float: ...


class _Streaming:
    """Shared time limits for streaming providers: the first item within
    ``first_item_timeout_s``, every later one within ``stream_idle_timeout_s`` of the one
    before (only the wait for the provider counts, not the consumer's own work)."""

    name = "provider"
    kind = ProviderError.kind
    first_item_timeout_s = 10.0
    stream_idle_timeout_s = STREAM_IDLE_TIMEOUT_S

    async def _guard(self, items: AsyncIterator[object], what: str) -> AsyncGenerator[object, None]:
        limit, gap = self.first_item_timeout_s, f"no {what} within"
        try:
            while True:
                try:
                    async with asyncio.timeout(limit):
                        item = await anext(items)
                except StopAsyncIteration:
                    return
                limit, gap = self.stream_idle_timeout_s, f"stream stalled: no {what} for"
                yield item
        except TimeoutError as exc:
            raise _tagged(ProviderTimeout(self.name, f"{gap} {limit} s"), self.kind) from exc
        except ProviderError as exc:
            _tagged(exc, self.kind)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise _tagged(ProviderError(self.name, f"{what} stream failed: {exc!r}"),
                          self.kind) from exc
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()


class LLM(_Streaming):
    """A chat model that streams text deltas.

    Both ways in, ``stream`` and ``prefill``, are final (implementations write ``_stream``
    and ``_prefill``) and pass the messages through :meth:`outgoing` first. With ``redact``
    on (the default; ``llm.redact`` in the configuration), personal data in the caller's
    messages is replaced there by placeholders, so no implementation ever sees it; tool
    results are treated the same way (a lookup may return the caller's own data). System
    and assistant messages are the agent's own text (the operator's prompt, and replies
    written from redacted words) and pass unchanged. Redaction is deterministic: the same
    history always makes the same prompt, and a prompt cache keeps its prefix turn to turn.
    """

    name = "llm"
    kind = "llm"
    redact = True  # replace personal data in user messages before the model sees them
    turn_end_timeout_s = 0.5  # ``turn_end_p`` is on the way to the reply: short, or nothing

    @final
    def outgoing(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        """``messages`` as the provider receives them."""
        if not self.redact:
            return messages
        out: list[ChatMessage] = []
        for m in messages:
            if m.role in ("user", "tool"):
                text = redact_text(m.content)
                if text != m.content:
                    m = replace(m, content=text)
            out.append(m)
        return out

    @final
    async def stream(self, messages: list[ChatMessage],
                     tools: Sequence[Tool] = ()) -> AsyncGenerator[StreamItem, None]:
        """Text deltas and, when ``tools`` are offered, whole :class:`ToolCall` items."""
        messages = self.outgoing(messages)
        items = self._stream(messages, tools) if tools else self._stream(messages)
        async with aclosing(self._guard(items, "token")) as deltas:
            async for delta in deltas:  # closed with this generator: the request ends now
                yield delta  # type: ignore[misc]

    @abstractmethod
    def _stream(self, messages: list[ChatMessage],
                tools: Sequence[Tool] = ()) -> AsyncIterator[StreamItem]:
        """Text deltas, and a :class:`ToolCall` per call the model makes (only when
        ``tools`` is not empty; a model that cannot call tools ignores them)."""

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
        it. Called while the caller still speaks. Implementations override ``_prefill``.
        Limited like a first token (``first_item_timeout_s``)."""
        await guarded(self.name, self.first_item_timeout_s,
                      self._prefill(self.outgoing(messages)), "prefill", kind=self.kind)

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
                             self._turn_end_p(self.outgoing(messages)), "turn end",
                             kind=self.kind)

    async def _turn_end_p(self, messages: list[ChatMessage]) -> float | None:
        return None

    @final
    async def complete_json(self, messages: list[ChatMessage], schema: dict[str, Any],
                            max_tokens: int) -> str:
        """The whole reply to ``messages``, JSON meant to match ``schema``: held to it by
        constrained decoding where the implementation can (``_stream_json``), a plain reply
        otherwise; the caller validates it either way. Timed like ``stream``."""
        parts: list[str] = []
        stream = self._stream_json(self.outgoing(messages), schema, max_tokens)
        async with aclosing(self._guard(stream, "token")) as deltas:
            async for delta in deltas:
                parts.append(str(delta))
        return "".join(parts)

    def _stream_json(self, messages: list[ChatMessage], schema: dict[str, Any],
                     max_tokens: int) -> AsyncIterator[Any]:
        return self._stream(messages)  # no tools offered: text deltas only


class TTS(_Streaming):
    """Text to speech that streams int16 mono chunks at ``sample_rate``."""

    name = "tts"
    kind = "tts"
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
    tools: Toolbox | None = None  # what the agent may call (rejoinder.tools.load_tools)
    guardrails: Guardrails | None = None  # checks on caller turns and clauses ([guardrails])

    async def warm(self, system: list[ChatMessage]) -> None:
        await self.stt.warm()
        await self.tts.warm()
        await self.llm.warm(system)
        if self.turn is not None:
            await self.turn.probability(np.zeros(SAMPLE_RATE, dtype=np.int16))

    async def close(self, deadline_s: float = 5.0) -> None:
        """Close every provider, each within ``deadline_s`` (one that hangs is logged by
        name and left behind)."""
        for p in (self.vad, self.stt, self.llm, self.tts, self.turn, self.tools,
                  self.guardrails):
            close = getattr(p, "close", None)
            if p is not None and close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    try:
                        async with asyncio.timeout(deadline_s):
                            await result
                    except TimeoutError:
                        log.error("%s did not close within %.1f s", p.name, deadline_s)
