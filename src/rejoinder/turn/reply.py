"""One agent turn: a handle with its turn id, its task, its trace, and the pipeline it runs.

    caller's utterance ─► STT final ─► LLM deltas ─► clause splitter ─► TTS ─► playout
                                        (producer)                      (speaker task)

A reply may start *speculatively*, at the caller's first pause: it transcribes, asks the
LLM and synthesises its first clause while the playout holds the audio back. The
conversation then either confirms it (the audio plays) or cancels it as one unit. Nothing
it does reaches the history or the caller's screen before it is confirmed. If the caller
makes a sound too short to drop it, their words are taken again at their next pause
(:meth:`Reply.retake`): the reply goes on if they are the same.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np

from rejoinder.core.audio import FRAME_SAMPLES, SAMPLE_RATE, Resampler
from rejoinder.core.errors import ProviderError, error_code
from rejoinder.core.tasks import cancel_all, cancel_and_wait
from rejoinder.guardrails.inline import ReplyGuard
from rejoinder.observability.trace import TurnTrace
from rejoinder.providers.base import ChatMessage
from rejoinder.tools.base import ToolCall
from rejoinder.turn.clauses import ClauseSplitter, split_clauses
from rejoinder.turn.grammar import same_words
from rejoinder.turn.tools import run_tool_rounds

if TYPE_CHECKING:
    from rejoinder.turn.engine import Conversation

_SENTENCE_MARKS = frozenset(".!?…")
_Clause = tuple[str, bool]  # (text, is a filler)
_LEAD_LEVEL = 100  # |sample| at or below this (-50 dBFS) before a reply's first sound is cut
_HOLD_RETAKE = "retake"  # a reply whose words are being taken again: it answers the old ones
_WHO = {"stt": "Speech recognition", "llm": "The language model", "tts": "Speech synthesis",
        "turn": "The end-of-turn model"}
_WHAT = {"timeout": "did not answer in time", "unavailable": "is unavailable"}


def caller_error(exc: BaseException) -> tuple[str, str]:
    """What the caller is told of a failed turn: a stable code (``llm_timeout``, see
    :func:`error_code`) and a short message. Never the exception's text: it may name
    internal URLs and vendor exceptions, and goes only to the log."""
    code = error_code(exc)
    if not isinstance(exc, ProviderError):
        return code, "The server could not answer this turn."
    who = _WHO.get(exc.kind, "A provider")
    return code, f"{who} {_WHAT.get(exc.failure, 'failed')}; this turn was not answered."


class Reply:
    """The handle: cancelling it stops its LLM, its TTS and its queued audio together."""

    def __init__(self, conv: Conversation, turn: int, trace: TurnTrace, *,
                 speculative: bool = False, canned: str | None = None,
                 heard: tuple[str, bool] | None = None) -> None:
        self.conv = conv
        self.turn = turn
        self.trace = trace
        self.speculative = speculative  # started before the turn was confirmed
        self.canned = canned            # fixed text to say (the greeting): no STT, no LLM
        self.user_text = ""
        self.transcript_ready = asyncio.Event()
        if canned is not None:
            self.transcript_ready.set()
        self.text = ""                  # everything generated so far
        self.empty = False              # the transcript was empty: nothing to answer
        self.unfinished = False         # the transcript trails off (``hold_unfinished``)
        self.clauses_queued = 0
        self.confirmed = asyncio.Event()
        if not speculative:
            self.confirmed.set()
        self.task: asyncio.Task[None] | None = None
        self._announced = False
        #: Tool rounds, for the history: assistant messages with tool calls, and results.
        self.tool_exchange: list[ChatMessage] = []
        self._text_mark = 0  # where in ``text`` the words after the last tool round start
        self._tool_events: list[dict[str, object]] = []  # held until confirmed
        self._claims: list[ToolCall] = []  # prefetched results used before confirmation
        rails = conv.stack.guardrails
        self.guard = None if rails is None or canned is not None else ReplyGuard(
            rails.checks, turn, rails.safe_line, conv.events, confirmed=not speculative)
        self._retaking: asyncio.Task[None] | None = None  # the words being taken again
        if heard is not None:  # the words and their verdict, already taken (retake)
            self.user_text, self.unfinished = heard
            self.empty = not self.user_text
            self.transcript_ready.set()
            trace.mark("stt_final", conv.clock.now())

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"reply-{self.turn}")

    async def cancel(self) -> None:
        # (not the retake itself, when it is what replaces this reply)
        await cancel_all(t for t in (self.task, self._retaking) if t is not asyncio.current_task())
        if self.guard is not None:
            self.guard.close()

    def retake(self, speech_end: float, now: float) -> bool:
        """The caller made a sound since this speculation's words were taken (too short to
        drop it): take them again at their pause (``now``; their speech ended at
        ``speech_end``). The reply goes on meanwhile, its audio held (it answers the old
        words); if the words are the same it stands, its LLM and TTS work kept; if not,
        the conversation starts a reply on them in its place. False if its words are not
        in yet, said nothing, or are being taken again: there is nothing to keep."""
        if (self.empty or not self.transcript_ready.is_set()
                or (self._retaking is not None and not self._retaking.done())):
            return False
        self.transcript_ready.clear()  # the turn waits for the new words
        self.conv.playout.hold(_HOLD_RETAKE)
        self._retaking = asyncio.create_task(self._retake(speech_end, now),
                                             name=f"retake-{self.turn}")
        return True

    async def _retake(self, speech_end: float, now: float) -> None:
        conv = self.conv
        try:
            try:
                text = await conv.stt.finish()
                unfinished = await conv.unfinished(text)
            except Exception as exc:  # as a failed transcription: the reply fails
                self.transcript_ready.set()
                await cancel_and_wait(self.task, what=f"reply {self.turn}")
                conv.reply_failed(self, exc)
                return
            if not same_words(text, self.user_text):
                await conv.replace(self, now, (text, unfinished))
                return
            conv.stats["restarts_kept"] += 1
            self.unfinished = unfinished
            self.trace.stamps.update(speech_end=speech_end, vad_end=now,
                                     stt_final=conv.clock.now())
            self.transcript_ready.set()
            conv.transcribed(self)
        finally:
            conv.playout.release(_HOLD_RETAKE)

    def confirm(self, now: float) -> None:
        self.trace.mark("turn_confirmed", now)
        self.confirmed.set()
        self._announce()
        if self.guard is not None:
            self.guard.confirm()  # its held events go out
        self.conv.prefetch.claim(self._claims)
        events, self._tool_events = self._tool_events, []
        for event in events:
            self.conv.events(event)

    def _tool_event(self, event: dict[str, object]) -> None:
        """Tool events reach the caller only once the turn is confirmed."""
        if self.confirmed.is_set():
            self.conv.events(event)
        else:
            self._tool_events.append(event)

    def _announce(self) -> None:
        """Show the caller's words once they are both known and confirmed."""
        if (not self._announced and self.confirmed.is_set() and self.canned is None
                and self.user_text):
            self._announced = True
            self.conv.events({"type": "user", "turn": self.turn, "text": self.user_text})

    # -- the pipeline ------------------------------------------------------------------------
    async def _run(self) -> None:
        conv = self.conv
        clauses: asyncio.Queue[_Clause | None] = asyncio.Queue()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._speak(clauses))
                filler = (tg.create_task(self._filler(clauses))
                          if conv.opts.filler_after_s > 0 and self.canned is None else None)
                try:
                    if await self._transcribe():
                        await self._think_guarded(clauses)
                finally:
                    if filler is not None:
                        filler.cancel()
                    clauses.put_nowait(None)
            await self._wait_played()
            await self.confirmed.wait()  # a speculative reply never commits on its own
            conv.reply_done(self, "empty" if self.empty else "completed")
        except* Exception as eg:
            self.transcript_ready.set()  # no transcript is coming: nobody waits for one
            if self._retaking is not None:
                self._retaking.cancel()
            conv.reply_failed(self, eg.exceptions[0])

    async def _transcribe(self) -> bool:
        if not self.transcript_ready.is_set():
            conv = self.conv
            self.user_text = await conv.stt.finish()
            self.trace.mark("stt_final", conv.clock.now())
            self.empty = not self.user_text
            if not self.confirmed.is_set():  # the words may still hold the turn
                self.unfinished = await conv.unfinished(self.user_text)
            self.transcript_ready.set()
            self._announce()
        self.conv.transcribed(self)  # also words already taken (``heard``)
        return not self.empty

    async def _think_guarded(self, clauses: asyncio.Queue[_Clause | None]) -> None:
        """:meth:`_think` behind the guardrails (``rejoinder.guardrails.inline``): the
        caller's words are checked before the LLM, and a blocked clause stops it."""
        guard = self.guard
        if guard is None:
            return await self._think(clauses)
        if (safe := await guard.admit(self.user_text)) is not None:
            self._clause_ready(safe, clauses)  # the answer is the safe line alone
            return None
        producer = asyncio.create_task(self._think(clauses), name=f"think-{self.turn}")
        blocked = asyncio.create_task(guard.blocked.wait(), name=f"guard-{self.turn}")
        try:
            await asyncio.wait((producer, blocked), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not producer.done() or not blocked.done():
                await cancel_all((producer, blocked))
        self.text = guard.said(self.text)
        if not producer.cancelled():
            producer.result()  # its failure fails the reply
        await guard.settle()
        return None

    async def _think(self, clauses: asyncio.Queue[_Clause | None]) -> None:
        """Producer: LLM deltas -> clauses."""
        conv = self.conv
        if self.canned is not None:
            for clause in split_clauses(self.canned, conv.opts.clause_min_words):
                self._clause_ready(clause, clauses)
            return
        messages = [conv.system, *conv.history, ChatMessage("user", self.user_text)]
        box = conv.stack.tools
        if box:
            def say(text: str, filler: bool) -> None:
                if filler:
                    conv.stats["tool_fillers"] += 1
                    clauses.put_nowait((text, True))
                else:  # the apology, after the round's results
                    self._text_mark = len(self.text)
                    for clause in split_clauses(text, conv.opts.clause_min_words):
                        self._clause_ready(clause, clauses)

            async def speak_round(msgs: list[ChatMessage],
                                  offer: bool) -> tuple[str, list[ToolCall]]:
                self._text_mark = len(self.text)
                return await self._speak_round(msgs, clauses, offer)

            await run_tool_rounds(conv, box, self.turn, self.confirmed, messages, speak_round,
                                  say, self._tool_event, self.tool_exchange, self._claims)
            return
        await self._speak_round(messages, clauses, False)

    async def _speak_round(self, messages: list[ChatMessage],
                           clauses: asyncio.Queue[_Clause | None],
                           offer_tools: bool) -> tuple[str, list[ToolCall]]:
        """One LLM request: its text is split into clauses and queued for speech as it
        comes (text before a tool call is spoken at once); returns (text, tool calls)."""
        conv = self.conv
        splitter = ClauseSplitter(conv.opts.clause_min_words)
        box = conv.stack.tools
        tools = box.offered() if offer_tools and box else ()
        calls: list[ToolCall] = []
        parts: list[str] = []
        sentences = 0
        stream = conv.stack.llm.stream(messages, tools)
        try:
            async for delta in stream:
                self.trace.mark("llm_first_token", conv.clock.now())
                if isinstance(delta, ToolCall):
                    if not calls:  # what was said before it is spoken now, not after
                        for clause in splitter.flush():
                            self._clause_ready(clause, clauses)
                    calls.append(delta)
                    continue
                parts.append(delta)
                for clause in splitter.push(delta):
                    if self._clause_ready(clause, clauses):
                        sentences += clause[-1] in _SENTENCE_MARKS
                if sentences >= conv.opts.max_reply_sentences and not calls:
                    return "".join(parts).strip(), []  # long enough for speech; closing
                    # the stream stops the LLM
        finally:
            await stream.aclose()
        for clause in splitter.flush():
            self._clause_ready(clause, clauses)
        return "".join(parts).strip(), calls

    def final_text(self) -> str:
        """What the reply said after its last tool results (all of it without tools)."""
        return self.text[self._text_mark:].strip()

    def _clause_ready(self, clause: str, clauses: asyncio.Queue[_Clause | None]) -> bool:
        """Queue ``clause`` for speech; False if it has nothing to say ("..." or "—" alone:
        a small LLM copies such marks), and then it is not a sentence either."""
        if not any(c.isalnum() for c in clause):
            return False
        self.trace.mark("first_clause", self.conv.clock.now())
        if self.guard is not None:
            self.guard.started(clause, len(self.text))  # its checks run from now on
        self.text += clause + " "
        self.clauses_queued += 1
        clauses.put_nowait((clause, False))
        return True

    async def _filler(self, clauses: asyncio.Queue[_Clause | None]) -> None:
        """Say a short filler if nothing is ready ``filler_after_s`` after confirmation."""
        conv = self.conv
        await self.confirmed.wait()
        due = self.trace.stamps["turn_confirmed"] + conv.opts.filler_after_s
        if (wait := due - conv.clock.now()) > 0:
            await conv.clock.sleep(wait)
        if self.clauses_queued == 0:
            conv.stats["fillers"] += 1
            clauses.put_nowait((conv.opts.filler, True))

    async def _speak(self, clauses: asyncio.Queue[_Clause | None]) -> None:
        """Consumer: clauses -> TTS audio -> playout, in order."""
        conv = self.conv
        tts, playout = conv.stack.tts, conv.playout
        lead = True  # until the reply's first sound: the synthesiser's leading silence
        while (item := await clauses.get()) is not None:
            text, filler = item
            safe = None if filler or self.guard is None else await self.guard.screen(text)
            if safe is not None:  # blocked: the safe line instead, and the reply ends
                text, self.text = safe, self.guard.said(self.text)  # type: ignore[union-attr]
            index = playout.begin_clause(self.turn, text, filler=filler)
            if self.trace.tts_cached is None:  # the first clause: will the cache play it?
                self.trace.tts_cached = tts.holds(text)
            resample = Resampler(tts.sample_rate, playout.rate)  # once: to the transport's
            async for chunk in tts.synthesize(text):
                self.trace.mark("tts_first_audio", conv.clock.now())
                if lead:
                    # Silence before the first sound is pure latency to the caller.
                    loud = np.flatnonzero(np.abs(chunk) > _LEAD_LEVEL)
                    chunk = chunk[loud[0]:] if loud.size else chunk[:0]
                    lead = not loud.size
                playout.push(self.turn, index, resample(chunk))
            playout.push(self.turn, index, resample(np.zeros(0, dtype=np.int16), last=True))
            playout.end_clause(self.turn, index)
            if safe is not None:
                return

    async def _wait_played(self) -> None:
        # Poll at frame rate: playout is pulled by the transport every 20 ms.
        frame_s = FRAME_SAMPLES / SAMPLE_RATE
        while self.conv.playout.is_playing(self.turn):
            await self.conv.clock.sleep(frame_s)
