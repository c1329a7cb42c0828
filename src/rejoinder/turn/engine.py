"""The turn engine: one conversation, from caller frames to agent audio.

Everything about turn-taking lives here; what one reply does is in ``turn/reply.py``.
Per caller frame the engine takes the VAD's verdict, feeds the caller's utterance to the
STT session, and moves through these decisions:

- **Silence** is counted from the caller's last audible frame: quiet frames after audible
  speech are silence even while the VAD, which lags, still calls them speech (up to
  ``quiet_tail_s`` in a row; ``turn/level.py``).
- **Pause** (``pause_s`` of silence after at least ``min_speech_s`` of speech): a
  *speculative* reply starts at once (final transcript, LLM, first TTS clause) with its
  audio held back. At ``model_after_s`` the end-of-turn model is asked about the audio
  so far (a little later than the pause: it judges an end better with some silence).
- **Turn confirmed**, by two signals: the model is sure (P >= ``confirm_p``) as soon as
  it answers; or ``end_silence_s`` of silence, unless the model says the caller is
  mid-sentence (P < ``hold_p``: then only ``max_silence_s`` ends the turn). The words are
  a check on both (``hold_unfinished``): the speculative transcript must be in (the reply
  cannot speak before it anyway), and if it trails off ("I was wondering if...", "send it
  to the") only ``max_silence_s`` ends the turn. The held audio plays. If the caller
  made sounds after the speculation started, the transcript is taken again and a reply
  built on different words is cancelled and restarted.
- **Caller goes on** (``min_speech_s`` of speech during the pause): the speculation is
  cancelled as one unit and the utterance continues. The same happens to a confirmed
  reply the caller has not heard yet: they were only pausing.
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
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE
from rejoinder.core.clock import Clock
from rejoinder.core.errors import ProviderError
from rejoinder.core.redact import read_ahead_text
from rejoinder.core.tasks import cancel_all
from rejoinder.observability.logs import call_id_var
from rejoinder.observability.trace import TurnTrace
from rejoinder.providers.base import LLM, ChatMessage, Stack
from rejoinder.tools.base import ToolCall
from rejoinder.turn.level import LevelGate
from rejoinder.turn.options import TurnOptions, words
from rejoinder.turn.playout import Playout
from rejoinder.turn.reply import Reply, caller_error
from rejoinder.turn.tools import Prefetch, prefetch_from_words

log = logging.getLogger(__name__)

__all__ = ["Conversation", "TurnOptions"]

Event = dict[str, object]
EventSink = Callable[[Event], None]

_vad_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
_HOLD_SPECULATIVE = "speculative"
_HOLD_CALLER = "caller"
_TURN_MODEL_WINDOW = 8 * SAMPLE_RATE


async def words_unfinished(opts: TurnOptions, text: str, *, punctuated: bool,
                           llm: LLM | None, context: list[ChatMessage]) -> bool:
    """Whether the caller's transcript reads as unfinished: it trails off
    (``TurnOptions.is_unfinished``), or it is a question the LLM (if any) finds unlikely to
    end there (``question_end_p``; ``context``: the messages before it)."""
    if not text:
        return False
    if opts.is_unfinished(text, punctuated=punctuated):
        return True
    if llm is None or opts.question_end_p <= 0 or not text.rstrip().endswith("?"):
        return False
    try:
        p = await llm.turn_end_p([*context, ChatMessage("user", text)])
    except ProviderError as exc:  # no answer: the other signals decide
        log.debug("turn end from the LLM failed: %s", exc)
        return False
    return p is not None and p < opts.question_end_p


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
        records: list[EventSink] | None = None,
    ) -> None:
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
        #: speculative_starts, commits, wasted, restarts, interruptions,
        #: false_interruptions, backchannels, fillers
        self.stats: Counter[str] = Counter()
        self._reply: Reply | None = None
        self._turns = 0
        self._wall_offset = self.clock.wall() - self.clock.now()
        # The caller's utterance: open from speech onset (with pre-roll) until a reply to it
        # starts playing, or it turns out to be noise or a backchannel.
        self._open = False
        self._frames: list[PCM] = []
        self._ring: list[PCM] = []      # recent frames while no utterance is open
        self._ring_len = 0
        self._voiced = 0                # samples from onset to the last voiced frame
        self._run = 0                   # samples in the current voiced run
        self._silence = 0               # samples since the last voiced frame
        self._level = LevelGate(self.opts.quiet_dbfs)
        self._quiet_cap = round(self.opts.quiet_tail_s * SAMPLE_RATE)
        self._audible = False           # the utterance has had an audible frame
        self._quiet_run = 0             # samples of quiet frames the VAD calls speech
        self._loud_run = 0              # samples of loud frames in a row, whatever the VAD says
        self._last_speech = 0.0
        self._paused = False            # the current silence has reached pause_s
        self._pause_id = 0
        self._next_ask_s = 0.0          # silence at which the end-of-turn model is asked next
        self._asking = False            # a question to the model is on its way
        self._turn_p: float | None = None  # the model's latest answer in this pause
        self._turn_failed = False
        self._end_pause()
        self._spec_voiced = 0           # self._voiced when the speculation started
        self._interrupting: Reply | None = None  # the reply held by caller speech
        self._prefilled = ""            # the caller's words last read ahead into the LLM
        self._prefill: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # model questions, word checks
        #: fillers, tool_fillers, prefetch_hits, prefetch_misses, prefetch_wasted (and above)
        self.prefetch = Prefetch(self.clock, self.stats)
        self._tool_tasks: set[asyncio.Task[Any]] = set()  # started side effects

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
                now = self.clock.now()
                self._loud_run = self._loud_run + len(frame) if self._level.loud(frame) else 0
                p = vad.push(frame) if inline else await loop.run_in_executor(
                    _vad_executor, vad.push, frame)
                if p >= threshold and not self._quiet_end(frame):
                    await self._on_speech(frame, now)
                    continue
                if p < threshold:
                    self._quiet_run = 0
                    self._level.silence(frame)
                if self._open:
                    await self._on_silence(frame, now)
                else:
                    self._remember(frame)
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

    def _remember(self, frame: PCM) -> None:
        """Keep the last ``preroll_s`` of audio before speech: onsets are soft."""
        self._ring.append(frame)
        self._ring_len += len(frame)
        preroll = self.opts.preroll_s * SAMPLE_RATE
        while self._ring and self._ring_len - len(self._ring[0]) >= preroll:
            self._ring_len -= len(self._ring.pop(0))

    def _quiet_end(self, frame: PCM) -> bool:
        """Whether a frame the VAD calls speech is the caller having stopped: quiet, after
        audible speech, and not yet ``quiet_tail_s`` of such frames in a row (longer, it is
        quiet speech: the VAD is trusted again). The VAD lags the end of speech by 50-200
        ms; the caller's silence starts at their last audible frame (see ``level.py``)."""
        if self._level.audible(frame):
            self._audible, self._quiet_run = True, 0
            return False
        if not self._audible:
            return False
        self._quiet_run += len(frame)
        return self._quiet_run <= self._quiet_cap

    async def _on_speech(self, frame: PCM, now: float) -> None:
        o = self.opts
        if not self._open:
            self._open = True
            for earlier in self._ring:
                self._frames.append(earlier)
                await self.stt.push(earlier, False)
            self._ring, self._ring_len = [], 0
        n = len(frame)
        self._frames.append(frame)
        await self.stt.push(frame, True)
        self._run += n
        self._voiced += self._silence + n
        self._silence = 0
        self._last_speech = now
        if self._paused:
            self._end_pause()
        reply = self._reply
        run_s = self._run / SAMPLE_RATE
        if self._interrupting is not None:
            if self._voiced / SAMPLE_RATE >= o.backchannel_max_s:
                await self._interrupt(self._interrupting)
        elif reply is None:
            self._read_ahead()
        elif not reply.confirmed.is_set():
            if run_s >= o.min_speech_s:  # the caller goes on: the speculation was wasted
                self.stats["wasted"] += 1
                await self._drop(reply, "wasted")
        elif not self.playout.started(reply.turn):
            if run_s >= o.min_speech_s:  # nothing heard yet: the caller was only pausing
                await self._drop(reply, "abandoned")
        elif max(self._run, self._loud_run) / SAMPLE_RATE >= o.barge_in_min_s:
            # Counted from the first loud frame: the VAD said speech only 30-100 ms later.
            self._interrupting = reply
            self.playout.hold(_HOLD_CALLER)
            self.events({"type": "hold", "turn": reply.turn,
                         "speech_ms": max(self._run, self._loud_run) * 1000 / SAMPLE_RATE})

    async def _on_silence(self, frame: PCM, now: float) -> None:
        o = self.opts
        self._frames.append(frame)
        await self.stt.push(frame, False)
        self._run = 0
        self._silence += len(frame)
        silence_s = self._silence / SAMPLE_RATE
        reply = self._reply
        if self._interrupting is not None:
            if not self._paused and silence_s >= o.pause_s:
                self._paused = True
                self._pause_id += 1
                self._spawn(self._judge_interruption(self._interrupting, self._pause_id),
                            "interruption")
            return
        if reply is not None and reply.confirmed.is_set():
            return  # the agent's turn; the caller is listening
        if self._voiced / SAMPLE_RATE < o.min_speech_s:
            if silence_s >= o.end_silence_s and reply is None:
                self._close_utterance()  # a click or a breath
            return
        if not self._paused and silence_s >= o.pause_s:
            self._paused = True
            self._pause_id += 1
            if reply is None and o.speculate:
                self._speculate(now)
        if (self._paused and self.stack.turn is not None and not self._asking
                and silence_s >= self._next_ask_s
                and (self._turn_p is None or self._turn_p < o.confirm_p)):
            # Asked at model_after_s; while it says "not yet", again every reask_s.
            self._asking = True
            self._next_ask_s += o.reask_s if o.reask_s > 0 else float("inf")
            self._spawn(self._ask_turn_model(self._pause_id), "turn-model")
        self._maybe_confirm(now)

    # -- the end of the caller's turn --------------------------------------------------
    def _speculate(self, now: float) -> None:
        self.stats["speculative_starts"] += 1
        self._spec_voiced = self._voiced
        self.playout.hold(_HOLD_SPECULATIVE)
        reply = self._start_reply(self._last_speech, speculative=True)
        reply.trace.mark("vad_end", now)

    async def _ask_turn_model(self, pause_id: int) -> None:
        audio = np.concatenate(self._frames)[-_TURN_MODEL_WINDOW:]
        try:
            p = await self.stack.turn.probability(audio)  # type: ignore[union-attr]
        except ProviderError as exc:
            log.warning("end-of-turn model failed, using silence alone: %s", exc)
            p = None
        if pause_id != self._pause_id or not self._paused:
            return  # the caller spoke again meanwhile
        self._asking = False
        self._turn_p, self._turn_failed = p, p is None
        self._maybe_confirm(self.clock.now())

    def _maybe_confirm(self, now: float) -> None:
        reply = self._reply
        if not self._paused or (reply is not None and reply.confirmed.is_set()):
            return
        o, p = self.opts, self._turn_p
        silence_s = self._silence / SAMPLE_RATE
        if self.stack.turn is None or self._turn_failed:
            done = silence_s >= o.end_silence_s
        elif p is None:  # not answered yet: a pause must not end the turn on silence alone
            done = silence_s >= o.max_silence_s
        else:
            done = (p >= o.confirm_p or (p >= o.hold_p and silence_s >= o.end_silence_s)
                    or silence_s >= o.max_silence_s)
        if (done and o.hold_unfinished and reply is not None and silence_s < o.max_silence_s
                and (not reply.transcript_ready.is_set() or reply.unfinished)):
            done = False  # the words are not in yet, or they trail off: not an end yet
        if (not done and o.hold_unfinished and o.finished_silence_s and reply is not None
                and silence_s >= o.finished_silence_s and reply.transcript_ready.is_set()
                and not reply.unfinished):
            done = True  # the model still says "not yet", but the words read as finished
        if done:
            self._confirm(now)

    async def unfinished(self, text: str) -> bool:
        """The words check for a speculative transcript (see :func:`words_unfinished`)."""
        if not self.opts.hold_unfinished:
            return False
        return await words_unfinished(self.opts, text, punctuated=self.stack.stt.punctuates,
                                      llm=self.stack.llm, context=[self.system, *self.history])

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
        if reply.empty:  # the caller's sound had no words
            reply.confirm(now)
            return
        if self._voiced != self._spec_voiced:
            # Sounds since the speculation started: is the transcript still the same?
            reply.confirm(now)
            self._spawn(self._recheck(reply), "recheck")
            return
        reply.confirm(now)
        self.playout.release(_HOLD_SPECULATIVE)

    async def _recheck(self, reply: Reply) -> None:
        try:
            text = await self.stt.finish()
        except ProviderError as exc:  # the words cannot be checked: the turn fails
            if self._reply is reply:
                await reply.cancel()
                self.reply_failed(reply, exc)
            return
        await reply.transcript_ready.wait()
        if self._reply is not reply:
            return
        if words(text) == words(reply.user_text):
            self.playout.release(_HOLD_SPECULATIVE)
            return
        self.stats["restarts"] += 1
        log.debug("turn %d: transcript changed after speculation; restarting", reply.turn)
        await reply.cancel()
        self.playout.flush()
        self.playout.forget(reply.turn)
        self.playout.release(_HOLD_SPECULATIVE)
        trace = TurnTrace(self.call_id, reply.turn, self._wall_offset)
        trace.stamps = {k: v for k, v in reply.trace.stamps.items()
                        if k in ("speech_end", "vad_end", "turn_confirmed")}
        trace.mark("stt_final", self.clock.now())
        trace.speculation = "restarted"
        fresh = Reply(self, reply.turn, trace, user_text=text)
        self._reply = fresh
        fresh.confirm(self.clock.now())
        fresh.start()

    def _read_ahead(self) -> None:
        """While the caller speaks, give the LLM their words so far (``prefill``): the
        reply's prompt will start the same, so a model with a prompt cache has read most of
        it by the time the turn ends. One at a time, each time the words change. Not after
        the caller stops: then the final Whisper pass and smart-turn hold the cores, and a
        read-ahead of a partial that lands meanwhile took 450-590 ms instead of ~80 and
        delayed the reply's own request (librivox, 2 runs)."""
        if not self.opts.prefill or (self._prefill is not None and not self._prefill.done()):
            return
        text = self.stt.partial()
        if self.stack.llm.redact:
            # Nothing of a number, address or spelled word still being said: only the
            # redacted words before it, less the last two (core.redact.read_ahead_text).
            text = read_ahead_text(text)
        if not text or text == self._prefilled:
            return
        self._prefilled = text
        messages = [self.system, *self.history, ChatMessage("user", text)]
        box = self.stack.tools
        if box and box.prefetch and any(not t.side_effects for t in box.tools.values()):
            # The same prompt, asked for the tools it would call: it reads ahead as well.
            self._prefill = self._spawn(prefetch_from_words(self, box, messages), "prefetch")
            return
        self._prefill = self._spawn(self._prefill_llm(messages), "prefill")

    async def _prefill_llm(self, messages: list[ChatMessage]) -> None:
        try:
            await self.stack.llm.prefill(messages)
        except ProviderError as exc:  # only a lost head start
            log.debug("prefill failed: %s", exc)

    def _start_reply(self, speech_end: float, *, speculative: bool = False,
                     canned: str | None = None) -> Reply:
        if self._prefill is not None:
            self._prefill.cancel()  # not started yet: the reply's own request comes first
        turn = self._turns + 1
        trace = TurnTrace(self.call_id, turn, self._wall_offset)
        trace.mark("speech_end", speech_end)
        if speculative:
            trace.speculation = "committed"
        reply = Reply(self, turn, trace, speculative=speculative, canned=canned)
        if canned is not None:
            self._turns = turn
        self._reply = reply
        reply.start()
        return reply

    async def _drop(self, reply: Reply, outcome: str) -> None:
        """Cancel a reply the caller has heard nothing of; their utterance goes on."""
        self._reply = None
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
        if self._voiced / SAMPLE_RATE >= o.min_speech_s:
            try:
                text = await self.stt.finish()
            except ProviderError as exc:  # words not known: the agent stops and listens
                log.warning("turn %d: speech over the agent not transcribed (%s): %s",
                            reply.turn, caller_error(exc)[0], exc)
                text = None
        if self._interrupting is not reply or pause_id != self._pause_id or not self._paused:
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
        self._end_pause()

    # -- the agent side ------------------------------------------------------------------
    def _on_clause_start(self, turn: int, index: int, text: str) -> None:
        """The transport just took the first frame of a clause: it is being spoken now."""
        reply = self._reply
        if reply is not None and reply.turn == turn and index == 0:
            reply.trace.mark("first_audio_sent", self.clock.now())
            if self._interrupting is None:
                self._close_utterance()  # the caller hears the answer: their turn is over
        self.events({"type": "agent", "turn": turn, "text": text})

    def reply_done(self, reply: Reply, outcome: str) -> None:
        if self._reply is not reply:
            return
        self._reply = None
        self.playout.release(_HOLD_SPECULATIVE)
        if not self.playout.started(reply.turn) and self._interrupting is None:
            self._close_utterance()  # nothing was said (no words, or an empty reply)
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
            self._end_pause()
        else:
            self._restart_utterance()
        self._finish(reply, "failed")

    # -- bookkeeping -----------------------------------------------------------------------
    def _restart_utterance(self) -> None:
        """Close the utterance a failed reply answered. Speech the caller has begun since
        is kept (with its pre-roll) as the start of the next one."""
        keep = self._run + round(self.opts.preroll_s * SAMPLE_RATE) if self._run else 0
        tail = np.concatenate(self._frames)[-keep:] if keep and self._frames else None
        self._close_utterance()
        if tail is not None:
            self._ring, self._ring_len = [tail], len(tail)

    def _close_utterance(self) -> None:
        self._open = False
        self._prefilled = ""
        self._frames = []
        self._voiced = self._run = self._silence = 0
        self._audible = False
        self._level.new_utterance()
        self._end_pause()
        self.stt.reset()

    def _end_pause(self) -> None:
        """The caller's silence is over (or the utterance): the next one is a new pause."""
        self._paused = self._asking = self._turn_failed = False
        self._turn_p = None
        self._next_ask_s = self.opts.model_after_s

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
        if reply.user_text:
            self.history.append(ChatMessage("user", reply.user_text))
        if exchange := getattr(reply, "tool_exchange", None):  # a reply that called tools
            self.history.extend(exchange)
            if not interrupted:
                agent_text = reply.final_text()
        if agent_text:  # an interruption before the first word leaves nothing said
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
        if reply.canned is None:
            self.prefetch.drop()  # the turn is over: what nobody took was wasted
        reply.trace.outcome = outcome
        self.playout.forget(reply.turn)
        rec = reply.trace.emit()
        self.traces.append(rec)
        self.events({"type": "trace", **rec})
