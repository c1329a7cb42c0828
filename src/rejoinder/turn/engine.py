"""The turn engine: one conversation, from caller frames to agent audio.

Everything about turn-taking lives here; what one reply does is in ``turn/reply.py``.
Per caller frame the engine takes the VAD's verdict, feeds the caller's utterance to the
STT session, and moves through these decisions:

- **Silence, pause, turn confirmed**: decided by the end-of-turn policy
  (``turn/policy.py``, which ``bench/turneval.py`` replays offline): at a pause a
  *speculative* reply starts with its audio held back; the end-of-turn model is asked;
  when the turn is confirmed the held audio plays. A speculation the caller made sounds
  after (too short to drop it, below) has their words taken again at their next pause: it
  goes on if they are the same, else one on the new words replaces it. The words that
  hold or end the turn are always those said last.
- **Caller goes on** (``min_speech_s`` of speech during the pause): the speculation is
  cancelled as one unit and the utterance continues. So is a confirmed reply they heard
  nothing of, or only its first ``take_back_s`` (speech begun then): they only paused and
  take the turn back, to be answered whole (nothing of the reply enters the history).
- **Caller speaks over the agent**: once the VAD calls it speech and it has been loud for
  ``barge_in_min_s`` (counted from its first loud frame, before the VAD's verdict), the
  agent's audio is held within one frame. When the caller pauses, their words decide:
  nothing, a cough or a backchannel ("mm-hm") lets the agent resume where it stopped (a
  false interruption); anything else interrupts: the reply is cancelled, and the history
  keeps only the words the caller heard, marked as interrupted. Speech longer than
  ``backchannel_max_s`` interrupts without waiting for words.

Durations are counted in samples of caller audio, not read off the clock, so network
jitter cannot stretch or shrink them; the clock only stamps when things happened.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE
from rejoinder.core.clock import Clock
from rejoinder.core.errors import ProviderError
from rejoinder.core.tasks import cancel_all
from rejoinder.observability.logs import call_id_var
from rejoinder.observability.trace import TurnTrace
from rejoinder.providers.base import ChatMessage, Stack
from rejoinder.tools.base import ToolCall
from rejoinder.turn.history import commit_turn
from rejoinder.turn.level import LevelGate, PreRoll
from rejoinder.turn.options import TurnOptions
from rejoinder.turn.playout import Playout
from rejoinder.turn.policy import Act, EndOfTurn, EndWeights, QuietTail, Words
from rejoinder.turn.readahead import ReadAhead
from rejoinder.turn.reply import Reply, caller_error
from rejoinder.turn.tools import Prefetch

log = logging.getLogger(__name__)

__all__ = ["Conversation", "TurnOptions"]

Event = dict[str, object]
EventSink = Callable[[Event], None]

_vad_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
_HOLD_SPECULATIVE = "speculative"
_HOLD_CALLER = "caller"
_TURN_MODEL_WINDOW = 8 * SAMPLE_RATE


@functools.cache
def _weights() -> EndWeights:
    return EndWeights.load()  # read once per process: the file ships with the package


class Conversation:
    """One call's turn-taking loop."""

    def __init__(self, stack: Stack, system_prompt: str, *, options: TurnOptions | None = None,
                 playout: Playout | None = None, events: EventSink | None = None,
                 clock: Clock | None = None, call_id: str = "-", greeting: str | None = None,
                 records: list[EventSink] | None = None) -> None:
        self.stack = stack
        self.opts = options or TurnOptions()
        self.clock = clock or Clock()
        self.call_id = call_id
        self.system = ChatMessage("system", system_prompt)
        self.history: list[ChatMessage] = []
        self.events: EventSink = events or (lambda e: None)
        #: Sinks for the call's record only, never the caller: ``tool_record`` events,
        #: with the tool's arguments (redacted).
        self.records: list[EventSink] = list(records or ())
        self.playout = playout or Playout()
        self.playout.on_clause_start = self._on_clause_start
        self.greeting = greeting
        self.stt = stack.stt.session()  # the caller's utterance, transcribed as it comes
        self.traces: list[dict[str, object]] = []  # emitted turn records, in order
        #: speculative_starts, commits, wasted, restarts (a speculation's words taken again at
        #: the caller's next pause; restarts_kept: they were the same), take_backs,
        #: interruptions, false_interruptions, backchannels, fillers
        self.stats: Counter[str] = Counter()
        self._reply: Reply | None = None
        self._turns = 0
        self._wall_offset = self.clock.wall() - self.clock.now()
        # The caller's utterance: open from speech onset (with pre-roll) until a reply to it
        # starts playing, or it turns out to be noise or a backchannel.
        self._open = False
        self._frames: list[PCM] = []
        self._preroll = PreRoll(self.opts.preroll_s)  # recent frames while none is open
        #: The end-of-turn decision, and its counters of the utterance (in samples).
        self.turn = EndOfTurn(self.opts, model=stack.turn is not None, weights=(
            _weights() if self.opts.end_signal == "fitted" else None))
        self._level = LevelGate(self.opts.quiet_dbfs)
        self._tail = QuietTail(round(self.opts.quiet_tail_s * SAMPLE_RATE))
        self._loud_run = 0              # samples of loud frames in a row, whatever the VAD says
        self._last_speech = 0.0
        self._take_back_until = math.inf  # the reply to the utterance started, + take_back_s
        self._interrupting: Reply | None = None  # the reply held by caller speech
        self._tasks: set[asyncio.Task[None]] = set()  # model questions, word checks
        self.read_ahead = ReadAhead(self, self._spawn)
        #: fillers, tool_fillers, prefetch_hits, prefetch_misses, prefetch_wasted (and above)
        self.prefetch = Prefetch(self.clock, self.stats)
        self._tool_tasks: set[asyncio.Task[Any]] = set()  # started side effects
        self._ending = False  # the goodbye is being said (say_goodbye)

    # -- the caller side ---------------------------------------------------------------
    async def run(self, frames: AsyncIterator[PCM]) -> None:
        """Consume caller frames (16 kHz mono int16, any length) until they end."""
        call_id_var.set(self.call_id)  # every log line of this call carries its id
        vad = self.stack.vad.stream()
        inline = getattr(self.stack.vad, "inline", False)
        loop = asyncio.get_running_loop()
        threshold = self.opts.vad_threshold
        if self.greeting:
            self._start_reply(self.clock.now(), canned=self.greeting)
        try:
            async for frame in frames:
                if self._ending:  # saying goodbye: the caller is no longer listened to
                    continue
                now = self.clock.now()
                if now >= self._take_back_until and not self.turn.run:
                    self._close_utterance()  # the caller heard the answer: their turn is over
                self._loud_run = self._loud_run + len(frame) if self._level.loud(frame) else 0
                p = vad.push(frame) if inline else await loop.run_in_executor(
                    _vad_executor, vad.push, frame)
                audible = p >= threshold and self._level.audible(frame)
                if p >= threshold and not self._tail.quiet(len(frame), audible):
                    await self._on_speech(frame, now)
                    continue
                if p < threshold:
                    self._tail.silent()
                    self._level.silence(frame)
                if self._open:
                    await self._on_silence(frame, now)
                else:
                    self._preroll.keep(frame)
        finally:
            await self.close()

    async def close(self) -> None:
        await cancel_all(self._tasks)  # all at once: none outlives a second cancellation
        reply, self._reply = self._reply, None
        if reply is not None:
            await reply.cancel()
            self._finish(reply, "abandoned")
        self.prefetch.drop()
        if self._tool_tasks:  # a started side effect completes (each within its timeout_s)
            await asyncio.wait(set(self._tool_tasks))

    async def _on_speech(self, frame: PCM, now: float) -> None:
        o = self.opts
        if not self._open:
            self._open = True
            for earlier in self._preroll.take():
                self._frames.append(earlier)
                await self.stt.push(earlier, False)
        t = self.turn
        self._frames.append(frame)
        await self.stt.push(frame, True)
        t.speech(len(frame))
        self._last_speech = now
        reply = self._reply
        run_s = t.run / SAMPLE_RATE
        if self._interrupting is not None:
            if t.voiced / SAMPLE_RATE >= o.backchannel_max_s:
                await self._interrupt(self._interrupting)
        elif reply is None:
            self.read_ahead.update()
        elif not reply.confirmed.is_set():
            if run_s >= o.min_speech_s:  # the caller goes on: the speculation was wasted
                self.stats["wasted"] += 1
                await self._drop(reply, "wasted")
        elif not self.playout.started(reply.turn) or self._take_back_until < math.inf:
            if run_s >= o.min_speech_s:  # nothing (or little) heard: they were only pausing
                t.overridden()
                self.stats["take_backs"] += self.playout.started(reply.turn)
                await self._drop(reply, "abandoned")
        elif max(t.run, self._loud_run) / SAMPLE_RATE >= o.barge_in_min_s:
            # Counted from the first loud frame: the VAD said speech only 30-100 ms later.
            self._interrupting = reply
            self.playout.hold(_HOLD_CALLER)
            self.events({"type": "hold", "turn": reply.turn,
                         "speech_ms": max(t.run, self._loud_run) * 1000 / SAMPLE_RATE})

    async def _on_silence(self, frame: PCM, now: float) -> None:
        t = self.turn
        self._frames.append(frame)
        await self.stt.push(frame, False)
        t.quiet(len(frame))
        reply = self._reply
        if self._interrupting is not None:
            if t.pause_begins():
                self._spawn(self._judge_interruption(self._interrupting, t.pause_id),
                            "interruption")
            return
        if reply is not None and reply.confirmed.is_set():
            return  # the agent's turn; the caller is listening
        act = t.decide(self._words())
        if act & Act.CLOSE:
            self._close_utterance()  # a click or a breath
        if act & Act.SPECULATE:
            await self._speculate(now)
        if act & Act.ASK:
            self._spawn(self._ask_turn_model(t.pause_id), "turn-model")
        if act & Act.CONFIRM:
            self._confirm(now)

    # -- the end of the caller's turn --------------------------------------------------
    async def _speculate(self, now: float) -> None:
        stale = self._reply  # from an earlier pause: the caller made sounds since
        if stale is not None:
            self.stats["restarts"] += 1
            if stale.retake(self._last_speech, now):
                return  # the words are taken again: it goes on if they are the same
        await self.replace(stale, now)

    async def replace(self, stale: Reply | None, now: float,
                      heard: tuple[str, bool] | None = None) -> None:
        """A held reply at the pause of ``now``, in place of ``stale``; ``heard``: its words."""
        if stale is not None:
            if stale is not self._reply:
                return  # dropped meanwhile
            await self._drop(stale, "wasted")
        self.stats["speculative_starts"] += 1
        self.playout.hold(_HOLD_SPECULATIVE)
        reply = self._start_reply(self._last_speech, speculative=True, heard=heard)
        reply.trace.mark("vad_end", now)
        if stale is not None:
            reply.trace.speculation = "restarted"

    async def _ask_turn_model(self, pause_id: int) -> None:
        audio = np.concatenate(self._frames)[-_TURN_MODEL_WINDOW:]
        try:
            p = await self.stack.turn.probability(audio)  # type: ignore[union-attr]
        except ProviderError as exc:
            log.warning("end-of-turn model failed, using silence alone: %s", exc)
            p = None
        if self.turn.answer(pause_id, p):  # not stale: the caller did not speak meanwhile
            self._maybe_confirm(self.clock.now())

    def _words(self) -> Words | None:
        """The speculative reply's transcript for the policy; None: no reply."""
        reply = self._reply
        if reply is None or not reply.transcript_ready.is_set():
            return None if reply is None else Words.PENDING
        return Words.UNFINISHED if reply.unfinished else Words.FINISHED

    def _maybe_confirm(self, now: float) -> None:
        reply = self._reply
        if (reply is None or not reply.confirmed.is_set()) and self.turn.done(self._words()):
            self._confirm(now)

    async def unfinished(self, text: str) -> bool:
        """The words check for a speculative transcript (``ReadAhead.judge``)."""
        return await self.read_ahead.judge(text)

    def transcribed(self, reply: Reply) -> None:
        """A reply's transcript is in: it may be the last signal the turn waited for."""
        if reply is self._reply and not reply.confirmed.is_set():
            self._maybe_confirm(self.clock.now())

    def _confirm(self, now: float) -> None:
        reply = self._reply
        if reply is None:  # no speculation: the reply starts now
            reply = self._start_reply(self._last_speech)
            reply.trace.mark("vad_end", now)
        self._turns = reply.turn
        if not reply.speculative:
            reply.confirm(now)
            return
        self.stats["commits"] += 1
        reply.confirm(now)
        self.playout.release(_HOLD_SPECULATIVE)

    def _start_reply(self, speech_end: float, *, speculative: bool = False,
                     canned: str | None = None, heard: tuple[str, bool] | None = None) -> Reply:
        self.read_ahead.cancel()  # not started yet: the reply's own request comes first
        turn = self._turns + 1
        trace = TurnTrace(self.call_id, turn, self._wall_offset)
        trace.mark("speech_end", speech_end)
        if speculative:
            trace.speculation = "committed"
        reply = Reply(self, turn, trace, speculative=speculative, canned=canned, heard=heard)
        if canned is not None:
            self._turns = turn
        self._reply = reply
        reply.start()
        return reply

    async def _drop(self, reply: Reply, outcome: str) -> None:
        """Cancel a reply the caller has heard nothing of; their utterance goes on."""
        self._reply, self._take_back_until = None, math.inf
        await reply.cancel()
        self.playout.flush()
        self.playout.release(_HOLD_SPECULATIVE)
        if outcome == "wasted":
            self.playout.forget(reply.turn)  # not a turn: no trace, the id is reused
        else:
            self._finish(reply, outcome)

    # -- the caller over the agent -------------------------------------------------------
    async def _judge_interruption(self, reply: Reply, pause_id: int) -> None:
        """The caller paused after speaking over ``reply``: was it an interruption?"""
        o = self.opts
        text: str | None = ""
        if self.turn.voiced / SAMPLE_RATE >= o.min_speech_s:
            try:
                text = await self.stt.finish()
            except ProviderError as exc:  # words not known: the agent stops and listens
                log.warning("turn %d: speech over the agent not transcribed (%s): %s",
                            reply.turn, caller_error(exc)[0], exc)
                text = None
        t = self.turn
        if self._interrupting is not reply or pause_id != t.pause_id or not t.paused:
            return  # decided meanwhile, or the caller went on (judged at their next pause)
        if text is not None and o.is_backchannel(text):
            self.stats["backchannels" if text else "false_interruptions"] += 1
            self._interrupting = None
            self._close_utterance()
            self.playout.release(_HOLD_CALLER)
            self.events({"type": "resume", "turn": reply.turn})
        else:
            await self._interrupt(reply)

    async def _interrupt(self, reply: Reply) -> None:
        """Barge-in: the reply ends here, with what the caller heard of it."""
        self._interrupting = None
        self.stats["interruptions"] += 1
        if self._reply is reply:
            self._reply = None
            heard = self.playout.heard(reply.turn)
            self.playout.flush()
            await reply.cancel()
            self._commit(reply, heard, interrupted=True)
            self.events({"type": "interrupted", "turn": reply.turn, "heard": heard})
            self._finish(reply, "interrupted")
        self.playout.release(_HOLD_CALLER)
        # The caller's words are the start of their turn; if they already paused, the
        # pause starts over so that speculation and the end-of-turn model see it.
        self.turn.end_pause()

    # -- the agent side ------------------------------------------------------------------
    def _on_clause_start(self, turn: int, index: int, text: str) -> None:
        """The transport just took the first frame of a clause: it is being spoken now."""
        reply = self._reply
        if reply is not None and reply.turn == turn and index == 0:
            reply.trace.mark("first_audio_sent", now := self.clock.now())
            if self._interrupting is None and self.opts.take_back_s and reply.canned is None:
                self._take_back_until = now + self.opts.take_back_s  # theirs till then
            elif self._interrupting is None:
                self._close_utterance()  # the caller hears the answer: their turn is over
        self.events({"type": "agent", "turn": turn, "text": text})

    def reply_done(self, reply: Reply, outcome: str) -> None:
        if self._reply is not reply:
            return
        self._reply = None
        self.playout.release(_HOLD_SPECULATIVE)
        if self._interrupting is None and (not self.playout.started(reply.turn)
                                           or self._take_back_until < math.inf):
            self._close_utterance()  # nothing was said (no words, or an empty reply), or all
        if outcome != "empty":
            self._commit(reply, reply.text.strip(), interrupted=False)
        self._finish(reply, outcome)

    def reply_failed(self, reply: Reply, exc: BaseException) -> None:
        """The reply failed at some stage: the caller gets a code and a stable message
        (:func:`caller_error`), the log the full detail, and the call goes on: the caller's
        next utterance starts fresh."""
        code, message = caller_error(exc)
        if isinstance(exc, ProviderError):
            log.warning("turn %d failed (%s): %s", reply.turn, code, exc)
        else:
            log.error("turn %d failed (%s)", reply.turn, code, exc_info=exc)
        reply.trace.error = code  # the record goes out too (trace event, /api/calls)
        self.events({"type": "error", "turn": reply.turn, "code": code, "message": message})
        if self._reply is not reply:
            return
        self._reply = None
        self.playout.flush()
        self.playout.release(_HOLD_SPECULATIVE)
        self._turns = max(self._turns, reply.turn)
        if self._interrupting is reply:
            # The caller is speaking over it: their words are the start of their next turn.
            self._interrupting = None
            self.playout.release(_HOLD_CALLER)
            self.turn.end_pause()
        else:
            self._restart_utterance()
        self._finish(reply, "failed")

    # -- the end of the call ----------------------------------------------------------------
    async def say_goodbye(self, text: str) -> None:
        """Say ``text`` now, as a turn of its own, and return once it has been played (the
        call ends next: a server draining). A reply in progress ends where the caller
        stopped hearing it, as at a barge-in; one they heard nothing of is abandoned. From
        here on the caller is not listened to: their words would not stop the goodbye."""
        self._ending = True
        await cancel_all(self._tasks)  # a turn-model question, a word check: no new turn
        reply, self._reply = self._reply, None
        self._interrupting = None
        if reply is not None:
            heard = self.playout.heard(reply.turn)
            self.playout.flush()
            await reply.cancel()
            if heard:
                self._commit(reply, heard, interrupted=True)
            self._finish(reply, "interrupted" if heard else "abandoned")
        self.playout.release(_HOLD_SPECULATIVE)
        self.playout.release(_HOLD_CALLER)
        goodbye = self._start_reply(self.clock.now(), canned=text)
        if goodbye.task is not None:
            await asyncio.wait((goodbye.task,))  # its failure is reported by reply_failed

    # -- bookkeeping -----------------------------------------------------------------------
    def _restart_utterance(self) -> None:
        """Close the utterance a failed reply answered. Speech the caller has begun since
        is kept (with its pre-roll) as the start of the next one."""
        run = self.turn.run
        keep = run + round(self.opts.preroll_s * SAMPLE_RATE) if run else 0
        tail = np.concatenate(self._frames)[-keep:] if keep and self._frames else None
        self._close_utterance()
        if tail is not None:
            self._preroll.start_with(tail)

    def _close_utterance(self) -> None:
        self._open, self._take_back_until = False, math.inf
        self.read_ahead.text = ""
        self._frames = []
        self.turn.new_utterance()
        self._tail.new_utterance()
        self._level.new_utterance()
        self.stt.reset()

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed", task.get_name(), exc_info=exc)

    def spawn_tool(self, coro: Coroutine[object, object, Any], name: str) -> asyncio.Task[Any]:
        """A side-effecting tool call: held here, not by its reply, so that it completes
        even if the reply is cancelled."""
        task = asyncio.create_task(coro, name=f"tool-{name}")
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)
        return task

    def record(self, event: Event) -> None:
        for sink in self.records:
            sink(event)

    def tool_exchange_late(self, call: ToolCall, result: str) -> None:
        """A side effect that completed after its reply was cancelled: the history says so,
        or the next reply would not know (and might do it again)."""
        self.history.append(ChatMessage("assistant", "", tool_calls=(call,)))
        self.history.append(ChatMessage("tool", result, tool_call_id=call.id))

    def _commit(self, reply: Reply, agent_text: str, interrupted: bool) -> None:
        commit_turn(self.history, reply, agent_text, interrupted=interrupted,
                    cap=self.opts.max_history_messages)

    def _finish(self, reply: Reply, outcome: str) -> None:
        if reply.trace.outcome != "pending":
            return
        if reply.canned is None:
            self.prefetch.drop()  # the turn is over: what nobody took was wasted
        reply.trace.outcome = outcome
        self.playout.forget(reply.turn)
        rec = reply.trace.emit()
        self.traces.append(rec)
        self.events({"type": "trace", **rec})
