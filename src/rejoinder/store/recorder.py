"""The recorder: turns the conversation's events into call records, written off the
event loop's critical path.

Each call gets a :class:`CallLog`, which subscribes to the events the conversation
already sends to the caller (``user``, ``agent``, ``interrupted``, ``hold``, ``guardrail``,
``error``, ``trace``) and assembles one :class:`TurnRecord` per finished turn (the
``trace`` event ends it). The record goes into one bounded queue per server; a single
writer task drains it in batches, in order. When the database is slow or down the writer
retries with a growing pause and the records wait in the queue; only a full queue drops a
record, with a warning that says how many were dropped. A turn is in the database
milliseconds after it ends, so a killed server loses at most the turn in progress.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import deque
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError

from rejoinder.config import StoreOptions
from rejoinder.core.clock import Clock
from rejoinder.core.redact import redact
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.store.db import (
    CallEnd,
    CallStart,
    GuardrailFlag,
    Store,
    ToolCallLate,
    ToolCallRecord,
    TurnMeasured,
    TurnRecord,
    Write,
)

log = logging.getLogger(__name__)

_BATCH = 200
_RETRY_FIRST_S = 0.25
_RETRY_MAX_S = 5.0
_CODE = re.compile(r"[a-z][a-z0-9_.]{0,63}")  # an error code, not an error's text
_RULE = re.compile(r"[a-z][a-z0-9_]{0,39}(?::[a-z0-9_]{1,40})?")  # a guardrail's rule name


class Recorder:
    """One per server: the queue, the writer task, and periodic pruning."""

    def __init__(self, store: Store, *, queue_max: int = 10_000, keep_days: float = 0.0,
                 prune_interval_s: float = 3600.0, redact_text: bool = True,
                 clock: Clock | None = None, owns_store: bool = False) -> None:
        self.store = store
        self.owns_store = owns_store
        self.queue_max = queue_max
        self.keep_days = keep_days
        self.prune_interval_s = prune_interval_s
        self.redact_text = redact_text
        self.clock = clock or Clock()
        self.dropped = 0           # records dropped because the queue was full, in total
        self.written = 0           # records written, in total
        self._queue: deque[Write] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._dropped_unreported = 0
        self._forgotten: set[str] = set()
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
            if self.keep_days > 0:
                self._pruner = asyncio.create_task(self._prune_loop(), name="store-pruner")

    async def flush(self) -> None:
        """Wait until everything queued so far is written (or dropped)."""
        await self._idle.wait()

    async def close(self, deadline: float = 5.0) -> None:
        """Write what is queued (at most ``deadline`` seconds), then stop."""
        await cancel_and_wait(self._pruner, what="store pruner")
        if self._writer is not None and self._queue:
            try:
                await asyncio.wait_for(asyncio.shield(self._idle.wait()), deadline)
            except TimeoutError:
                log.error("call store: %d records not written at shutdown (database "
                          "unavailable for %.0f s)", len(self._queue), deadline)
        await cancel_and_wait(self._writer, what="store writer")
        self._writer = None
        if self.owns_store:
            await self.store.close()

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- per call ---------------------------------------------------------------------------
    def call(self, call_id: str, *, transport: str, agent: str,
             twilio_call_sid: str | None = None) -> CallLog:
        return CallLog(self, CallStart(call_id, transport, agent, self.now(), twilio_call_sid))

    def forget(self, call_id: str) -> None:
        """The call's record was deleted: drop what is queued for it, record no more."""
        self._forgotten.add(call_id)
        kept = [w for w in self._queue if w.call_id != call_id]
        self._queue.clear()
        self._queue.extend(kept)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.wall(), UTC)

    def put(self, item: Write) -> None:
        """Queue a record; never blocks. A full queue drops it, with a warning."""
        if item.call_id in self._forgotten:
            return
        if len(self._queue) >= self.queue_max:
            self.dropped += 1
            self._dropped_unreported += 1
            if self._dropped_unreported == 1:
                log.warning("call store: queue full (%d records waiting for the database);"
                            " dropping new records until it drains", len(self._queue))
            return
        self._queue.append(item)
        self._idle.clear()
        self._wake.set()

    # -- the writer -------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        pause = _RETRY_FIRST_S
        failing = False
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            try:
                await self._write(batch)
            except BaseException as exc:
                # Back to the head of the queue, in order (less any call forgotten meanwhile).
                self._queue.extendleft(reversed(
                    [w for w in batch if w.call_id not in self._forgotten]))
                if not isinstance(exc, Exception):
                    raise
                # The database is down or slow: keep the records, retry.
                if not failing:
                    log.warning("call store: write failed (%s); %d records wait in the "
                                "queue, retrying", type(exc).__name__, len(self._queue))
                failing = True
                await self.clock.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX_S)
                continue
            self.written += len(batch)
            if failing:
                log.info("call store: writing again; %d records waited", len(batch))
            failing, pause = False, _RETRY_FIRST_S
            if self._dropped_unreported:
                log.warning("call store: %d records were dropped while the queue was full",
                            self._dropped_unreported)
                self._dropped_unreported = 0

    async def _write(self, batch: list[Write]) -> None:
        try:
            await self.store.write(batch)
        except IntegrityError:
            # A record that can never be written (its call deleted meanwhile): write the
            # others one by one, and skip that one rather than retry it for ever.
            for item in batch:
                try:
                    await self.store.write([item])
                except IntegrityError as exc:
                    log.warning("call store: a %s record cannot be written (%s); skipped",
                                type(item).__name__, type(exc.orig).__name__)

    async def _prune_loop(self) -> None:
        while True:
            try:
                n = await self.store.prune(self.now() - timedelta(days=self.keep_days))
                if n:
                    log.info("call store: deleted %d calls older than %g days", n,
                             self.keep_days)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("call store: pruning failed (%s); trying again later",
                            type(exc).__name__)
            await self.clock.sleep(self.prune_interval_s)


async def open_recorder(options: StoreOptions) -> Recorder:
    """The store of ``options``, migrated to the newest schema, and its started recorder;
    ``close()`` closes both."""
    store = Store.from_options(options)
    try:
        await store.migrate()
    except BaseException:
        await store.close()
        raise
    recorder = Recorder(store, queue_max=options.queue_max, keep_days=options.keep_days,
                        prune_interval_s=options.prune_interval_s,
                        redact_text=options.redact, owns_store=True)
    recorder.start()
    return recorder


class CallLog:
    """One call's records, assembled from the conversation's events (``on_event``)."""

    def __init__(self, recorder: Recorder, start: CallStart) -> None:
        self.recorder = recorder
        self.start = start
        self._started = False
        self._ended = False
        self._seq = 0
        self._user: dict[int, str] = {}
        self._agent: dict[int, list[str]] = {}
        self._heard: dict[int, str] = {}
        self._errors: dict[int, str] = {}
        self._measured: dict[int, float] = {}  # caller's v2v of turns not yet finished
        self._stop: dict[int, float] = {}  # the first hold's speech_ms, per turn
        self._guardrails: dict[int, list[GuardrailFlag]] = {}
        self._tools: dict[int, list[ToolCallRecord]] = {}
        self._finished: dict[int, int] = {}  # turn -> its seq

    @property
    def call_id(self) -> str:
        return self.start.call_id

    def begin(self) -> None:
        """The call is answered: its row is written."""
        if not self._started:
            self._started = True
            self.recorder.put(self.start)

    def end(self, outcome: str) -> None:
        if self._started and not self._ended:
            self._ended = True
            self.recorder.put(CallEnd(self.call_id, self.recorder.now(), outcome))

    def on_event(self, event: dict[str, object]) -> None:
        """Subscribe this to the conversation's events. Never raises."""
        try:
            self._on_event(event)
        except Exception:
            log.exception("call store: cannot record a %r event", event.get("type"))

    def _on_event(self, event: dict[str, object]) -> None:
        kind = event.get("type")
        turn = event.get("turn")
        if not isinstance(turn, int):
            return
        if kind == "user":
            self._user[turn] = str(event.get("text", ""))
        elif kind == "agent":
            self._agent.setdefault(turn, []).append(str(event.get("text", "")))
        elif kind == "interrupted":
            self._heard[turn] = str(event.get("heard", ""))
        elif kind == "hold":  # the first: when the agent stopped for the caller's speech
            speech = event.get("speech_ms")
            if isinstance(speech, int | float) and math.isfinite(speech) and speech >= 0:
                self._stop.setdefault(turn, float(speech))
        elif kind == "guardrail":
            action, rule = event.get("action"), event.get("rule")
            if action in ("blocked", "flagged"):
                self._guardrails.setdefault(turn, []).append(GuardrailFlag(
                    str(action), rule if isinstance(rule, str) and _RULE.fullmatch(rule)
                    else "other"))
        elif kind == "error":
            code = event.get("code")
            self._errors[turn] = code if isinstance(code, str) else "error"
        elif kind == "trace":
            self._finish_turn(turn, event)
        elif kind == "tool_record":  # the conversation's ``records`` sink, not the caller's
            self._tool(turn, event)
        elif kind == "measured":  # the caller's latency (validated by the call)
            v2v = event.get("v2v_ms")
            if not isinstance(v2v, int | float):
                return
            if turn in self._finished:
                self.recorder.put(TurnMeasured(self.call_id, turn, float(v2v)))
            else:
                self._measured.setdefault(turn, float(v2v))

    def _tool(self, turn: int, event: dict[str, object]) -> None:
        status = str(event.get("status", ""))
        status = status if _CODE.fullmatch(status) else "error"
        ms = event.get("ms")
        arguments = str(event.get("arguments", ""))
        record = ToolCallRecord(
            name=str(event.get("name", ""))[:200],
            arguments=redact(arguments) if self.recorder.redact_text else arguments,
            status=status, duration_ms=float(ms) if isinstance(ms, int | float) else None)
        seq = self._finished.get(turn)
        if seq is None:
            self._tools.setdefault(turn, []).append(record)
        else:
            self.begin()
            self.recorder.put(ToolCallLate(self.call_id, seq, record))

    def _finish_turn(self, turn: int, trace: dict[str, object]) -> None:
        self.begin()
        clean = redact if self.recorder.redact_text else _same
        interrupted = turn in self._heard
        heard = self._heard.pop(turn, None)
        stages = trace.get("ms_after_speech_end")
        wall = trace.get("speech_end_wall")
        outcome = str(trace.get("outcome", ""))
        # A code, never the error's text (it may quote a provider's answer).
        error = self._errors.pop(turn, None)
        if error is None and trace.get("error"):
            code = str(trace["error"])
            error = code if _CODE.fullmatch(code) else "error"
        cached = trace.get("tts_cached")
        speculation = trace.get("speculation")
        self.recorder.put(TurnRecord(
            call_id=self.call_id, seq=self._seq, turn=turn, outcome=outcome,
            speech_end_at=datetime.fromtimestamp(wall, UTC)
            if isinstance(wall, int | float) else None,
            user_text=clean(self._user.pop(turn, "")),
            agent_text=clean(" ".join(self._agent.pop(turn, []))),
            interrupted=interrupted,
            heard_text=None if heard is None else clean(heard),
            speculation=speculation if isinstance(speculation, str) else None,
            tts_cached=cached if isinstance(cached, bool) else None,
            error_code=error,
            stages_ms={k: float(v) for k, v in stages.items() if isinstance(v, int | float)}
            if isinstance(stages, dict) else {},
            caller_v2v_ms=self._measured.pop(turn, None),
            tool_calls=self._tools.pop(turn, []),
            barge_in_stop_ms=self._stop.pop(turn, None),
            guardrails=self._guardrails.pop(turn, []),
        ))
        self._finished[turn] = self._seq
        self._seq += 1


def _same(text: str) -> str:
    return text
