"""The turn engine: one conversation, from caller frames to agent audio.

Everything about turn-taking lives here. The engine reads 16 kHz caller
frames, tracks voice activity, decides when the caller's turn has ended, and
runs one :class:`Reply` per agent turn:

    utterance ─► STT ─► LLM deltas ─► clause splitter ─► TTS ─► playout
                             (producer task)           (speaker task)

Barge-in cancels the current reply as one unit: the LLM and TTS tasks stop,
queued audio is flushed, and the history keeps only the words the caller
heard, marked as interrupted. If the caller speaks before any agent audio was
heard, the pending reply is dropped and its audio is carried into the next
utterance (the caller was only pausing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rejoinder.core.audio import FRAME_SAMPLES, OUT_RATE, PCM, SAMPLE_RATE, Resampler
from rejoinder.core.clock import Clock
from rejoinder.core.errors import ProviderError
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.observability.trace import TurnTrace
from rejoinder.providers.base import ChatMessage, Stack
from rejoinder.turn.clauses import ClauseSplitter
from rejoinder.turn.playout import Playout

log = logging.getLogger(__name__)

Event = dict[str, object]
EventSink = Callable[[Event], None]

_SENTENCE_MARKS = frozenset(".!?…")
_vad_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")


@dataclass(frozen=True)
class TurnOptions:
    """Turn-taking knobs (seconds unless named otherwise)."""

    vad_threshold: float = 0.5
    end_silence_s: float = 0.3     # silence that ends the caller's turn
    min_speech_s: float = 0.12     # shorter voiced stretches are noise, not a turn
    barge_in_min_s: float = 0.2    # caller speech this long while the agent talks interrupts
    preroll_s: float = 0.2         # audio kept from before speech onset, for STT
    max_history_messages: int = 16
    clause_min_words: int = 3
    max_reply_sentences: int = 2   # a spoken reply stops after this many sentences

    def __post_init__(self) -> None:
        from rejoinder.core.errors import ConfigError

        if not 0.0 < self.vad_threshold < 1.0:
            raise ConfigError("turn.vad_threshold", "must be between 0 and 1")
        for name in ("end_silence_s", "min_speech_s", "barge_in_min_s", "preroll_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"turn.{name}", "must not be negative")
        if self.max_reply_sentences < 1:
            raise ConfigError("turn.max_reply_sentences", "must be at least 1")
        if self.max_history_messages < 2:
            raise ConfigError("turn.max_history_messages", "must be at least 2")


@dataclass
class Reply:
    """One agent turn: a handle with its turn id, its task and its trace."""

    turn: int
    audio: PCM                      # the caller's utterance this reply answers
    trace: TurnTrace
    task: asyncio.Task[None] | None = None
    user_text: str = ""
    text: str = ""                  # everything generated so far


class Conversation:
    """One call's turn-taking loop."""

    def __init__(
        self,
        stack: Stack,
        system_prompt: str,
        *,
        options: TurnOptions | None = None,
        playout: Playout | None = None,
        events: EventSink | None = None,
        clock: Clock | None = None,
        call_id: str = "-",
        greeting: str | None = None,
    ) -> None:
        self.stack = stack
        self.opts = options or TurnOptions()
        self.clock = clock or Clock()
        self.call_id = call_id
        self.system = ChatMessage("system", system_prompt)
        self.history: list[ChatMessage] = []
        self.events: EventSink = events or (lambda e: None)
        self.playout = playout or Playout()
        self.playout.on_clause_start = self._on_clause_start
        self.greeting = greeting
        self.traces: list[dict[str, object]] = []  # emitted turn records, in order
        self._reply: Reply | None = None
        self._turns = 0
        self._wall_offset = self.clock.wall() - self.clock.now()
        self._carry = np.zeros(0, dtype=np.int16)

    # -- the caller side ---------------------------------------------------------------
    async def run(self, frames: AsyncIterator[PCM]) -> None:
        """Consume caller frames (16 kHz mono int16, any length) until they end.

        Durations (speech length, silence length) are counted in samples of caller
        audio, not read off the clock, so network jitter cannot stretch or shrink
        them; the clock only stamps when things happened.
        """
        o = self.opts
        vad = self.stack.vad.stream()
        inline = getattr(self.stack.vad, "inline", False)
        loop = asyncio.get_running_loop()
        preroll, end_silence, min_speech, barge_in = (
            round(s * SAMPLE_RATE)
            for s in (o.preroll_s, o.end_silence_s, o.min_speech_s, o.barge_in_min_s))
        ring: list[PCM] = []          # recent frames while not in speech, for pre-roll
        ring_len = 0
        utterance: list[PCM] = []
        in_speech = False
        voiced = silence = 0          # samples since speech onset / since the last voiced frame
        last_speech = 0.0
        if self.greeting:
            self._start_reply(np.zeros(0, dtype=np.int16), self.clock.now(), text=self.greeting)
        try:
            async for frame in frames:
                now = self.clock.now()
                p = vad.push(frame) if inline else await loop.run_in_executor(
                    _vad_executor, vad.push, frame)
                if p >= o.vad_threshold:
                    if not in_speech:
                        in_speech, voiced = True, 0
                        utterance, ring, ring_len = ring, [], 0
                    voiced += silence + len(frame)
                    silence = 0
                    last_speech = now
                    utterance.append(frame)
                    if self._reply is not None and voiced >= barge_in:
                        await self._barge_in()
                elif in_speech:
                    utterance.append(frame)
                    silence += len(frame)
                    if silence >= end_silence:
                        in_speech, silence = False, 0
                        if voiced >= min_speech:
                            self._end_of_turn(np.concatenate(utterance), last_speech, now)
                        utterance = []
                else:
                    ring.append(frame)
                    ring_len += len(frame)
                    while ring and ring_len - len(ring[0]) >= preroll:
                        ring_len -= len(ring.pop(0))
        finally:
            await self.close()

    async def close(self) -> None:
        reply, self._reply = self._reply, None
        if reply is not None:
            await cancel_and_wait(reply.task, what=f"reply {reply.turn}")
            self._finish(reply, "abandoned")

    # -- turn decisions ----------------------------------------------------------------
    def _end_of_turn(self, audio: PCM, speech_end: float, now: float) -> None:
        if self._reply is not None:
            # Too short to interrupt the agent (a cough, an "mm-hm"): not a turn.
            return
        if self._carry.size:
            audio = np.concatenate((self._carry, audio))
            self._carry = np.zeros(0, dtype=np.int16)
        reply = self._start_reply(audio, speech_end)
        reply.trace.mark("vad_end", now)
        reply.trace.mark("turn_confirmed", now)

    def _start_reply(self, audio: PCM, speech_end: float, text: str | None = None) -> Reply:
        self._turns += 1
        trace = TurnTrace(self.call_id, self._turns, self._wall_offset)
        trace.mark("speech_end", speech_end)
        reply = Reply(self._turns, audio, trace)
        reply.task = asyncio.create_task(self._run_reply(reply, text), name=f"reply-{reply.turn}")
        self._reply = reply
        return reply

    async def _barge_in(self) -> None:
        reply = self._reply
        assert reply is not None
        self._reply = None
        heard_anything = self.playout.started(reply.turn)
        self.playout.flush()
        await cancel_and_wait(reply.task, what=f"reply {reply.turn}")
        if heard_anything:
            heard = self.playout.heard(reply.turn)
            self._commit(reply, heard, interrupted=True)
            self.events({"type": "interrupted", "turn": reply.turn, "heard": heard})
            self._finish(reply, "interrupted")
        else:
            # Nothing was heard: the caller had only paused. Answer the whole thing later.
            self._carry = reply.audio
            self._finish(reply, "abandoned")

    # -- one reply -----------------------------------------------------------------------
    async def _run_reply(self, reply: Reply, canned: str | None) -> None:
        trace, clock = reply.trace, self.clock
        try:
            if canned is None:
                reply.user_text = await self.stack.stt.transcribe(reply.audio)
                trace.mark("stt_final", clock.now())
                if not reply.user_text:
                    self._release(reply)
                    self._finish(reply, "empty")
                    return
                self.events({"type": "user", "turn": reply.turn, "text": reply.user_text})
            clauses: asyncio.Queue[str | None] = asyncio.Queue()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._speak(reply, clauses))
                await self._think(reply, clauses, canned)
            await self._wait_played(reply)
            if self._release(reply):
                self._commit(reply, reply.text.strip(), interrupted=False)
                self._finish(reply, "completed")
        except* ProviderError as eg:
            exc = eg.exceptions[0]
            log.warning("turn %d failed: %s", reply.turn, exc)
            reply.trace.error = str(exc)
            if self._release(reply):
                self.playout.flush()
                self._finish(reply, "failed")
            self.events({"type": "error", "turn": reply.turn, "message": str(exc)})

    async def _think(self, reply: Reply, clauses: asyncio.Queue[str | None],
                     canned: str | None) -> None:
        """Producer: LLM deltas -> clauses."""
        splitter = ClauseSplitter(self.opts.clause_min_words)
        try:
            if canned is not None:
                for clause in splitter.push(canned + " ") + splitter.flush():
                    self._clause_ready(reply, clause, clauses)
                return
            messages = [self.system, *self.history, ChatMessage("user", reply.user_text)]
            sentences = 0
            stream = self.stack.llm.stream(messages)
            try:
                async for delta in stream:
                    reply.trace.mark("llm_first_token", self.clock.now())
                    for clause in splitter.push(delta):
                        self._clause_ready(reply, clause, clauses)
                        sentences += clause[-1] in _SENTENCE_MARKS
                    if sentences >= self.opts.max_reply_sentences:
                        return  # long enough for speech; closing the stream stops the LLM
            finally:
                await stream.aclose()
            for clause in splitter.flush():
                self._clause_ready(reply, clause, clauses)
        finally:
            clauses.put_nowait(None)

    def _clause_ready(self, reply: Reply, clause: str, clauses: asyncio.Queue[str | None]) -> None:
        reply.trace.mark("first_clause", self.clock.now())
        reply.text += clause + " "
        clauses.put_nowait(clause)

    async def _speak(self, reply: Reply, clauses: asyncio.Queue[str | None]) -> None:
        """Consumer: clauses -> TTS audio -> playout, in order."""
        tts = self.stack.tts
        while (clause := await clauses.get()) is not None:
            index = self.playout.begin_clause(reply.turn, clause)
            resample = Resampler(tts.sample_rate, OUT_RATE)
            async for chunk in tts.synthesize(clause):
                reply.trace.mark("tts_first_audio", self.clock.now())
                self.playout.push(reply.turn, index, resample(chunk))
            self.playout.push(reply.turn, index, resample(np.zeros(0, dtype=np.int16), last=True))
            self.playout.end_clause(reply.turn, index)

    async def _wait_played(self, reply: Reply) -> None:
        # Poll at frame rate: playout is pulled by the transport every 20 ms.
        frame_s = FRAME_SAMPLES / SAMPLE_RATE
        while self.playout.is_playing(reply.turn):
            await self.clock.sleep(frame_s)

    def _on_clause_start(self, turn: int, index: int, text: str) -> None:
        """The transport just took the first frame of a clause: it is being spoken now."""
        if self._reply is not None and self._reply.turn == turn and index == 0:
            self._reply.trace.mark("first_audio_sent", self.clock.now())
        self.events({"type": "agent", "turn": turn, "text": text})

    # -- bookkeeping -----------------------------------------------------------------------
    def _release(self, reply: Reply) -> bool:
        """Stop treating ``reply`` as the current one; False if it already was not."""
        if self._reply is not reply:
            return False
        self._reply = None
        return True

    def _commit(self, reply: Reply, agent_text: str, interrupted: bool) -> None:
        if reply.user_text:
            self.history.append(ChatMessage("user", reply.user_text))
        if agent_text or interrupted:
            self.history.append(ChatMessage("assistant", agent_text, interrupted=interrupted))
        cap = self.opts.max_history_messages
        if len(self.history) > cap:
            # Drop the oldest half at once rather than one message per turn: the prompt
            # then keeps the same prefix for many turns, so the LLM's prompt cache holds.
            cut = len(self.history) - cap // 2
            while cut < len(self.history) and self.history[cut].role != "user":
                cut += 1
            del self.history[:cut]

    def _finish(self, reply: Reply, outcome: str) -> None:
        if reply.trace.outcome != "pending":
            return
        reply.trace.outcome = outcome
        self.playout.forget(reply.turn)
        rec = reply.trace.emit()
        self.traces.append(rec)
        self.events({"type": "trace", **rec})
