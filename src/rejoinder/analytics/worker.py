"""The analytics worker: takes the pending jobs of the ``call_analytics`` table, at most
``max_concurrent`` at a time, off every call's path.

A call that ends is ``submit``-ted: once its last turns are written (the recorder is
flushed first), its job row is created, and the worker runs it when a slot is free. An
attempt reads the stored transcript, asks the LLM for the form (``complete_json``: held to
the JSON schema where the model can be) and validates the answer with pydantic; an answer
that is not JSON, or not the schema's, is a failed attempt like a provider error. A failed
attempt waits ``retry_backoff_s`` (doubling each time) before the next; after
``max_attempts`` the job is failed. Only codes reach the log and the row, never the
transcript or the model's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from rejoinder.analytics.fields import parse_fields
from rejoinder.analytics.jobs import DONE, FAILED, PENDING, SKIPPED, AnalyticsJobs
from rejoinder.analytics.schema import (
    InvalidResult,
    answer_tokens,
    json_schema,
    messages,
    transcript_text,
    validate,
)
from rejoinder.config import AnalyticsOptions, Config
from rejoinder.core.clock import Clock
from rejoinder.core.errors import error_code
from rejoinder.core.tasks import cancel_all, cancel_and_wait
from rejoinder.observability.logs import call_id_var
from rejoinder.providers.base import LLM, Stack
from rejoinder.store.db import Store
from rejoinder.store.recorder import Recorder

log = logging.getLogger(__name__)

_LOOP_RETRY_FIRST_S = 1.0
_LOOP_RETRY_MAX_S = 60.0
_FLUSH_WAIT_S = 5.0
_FINAL = (DONE, FAILED, SKIPPED)


class AnalyticsWorker:
    """One per server. ``llm`` is the model itself, or a blocking function that loads it
    (called once, in a thread, when the first job runs)."""

    def __init__(self, store: Store, llm: LLM | Callable[[], LLM], options: AnalyticsOptions,
                 *, flush: Callable[[], Awaitable[None]] | None = None,
                 clock: Clock | None = None, owns_llm: bool = False) -> None:
        self.store = store
        self.jobs = AnalyticsJobs(store)
        self.options = options
        self.fields = parse_fields(options.fields)
        self.schema = json_schema(self.fields)
        self.max_tokens = answer_tokens(self.fields)
        self.clock = clock or Clock()
        self.owns_llm = owns_llm
        self._llm = llm if isinstance(llm, LLM) else None
        self._load = None if isinstance(llm, LLM) else llm
        self._loading = asyncio.Lock()
        self._flush = flush
        self._submitted: list[str] = []
        self._orphans: set[str] = set()  # jobs whose outcome could not be written
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self.done = 0
        self.failed_attempts = 0

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start working: pending jobs of the store (from before a restart) first."""
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="analytics")

    async def close(self) -> None:
        """Stop; a job cut short is taken up again at the next start, and so is one of a
        call that ended just now (its row is written first, if the store allows)."""
        await cancel_and_wait(self._loop, what="analytics worker")
        self._loop = None
        if self._submitted:
            try:
                async with asyncio.timeout(_FLUSH_WAIT_S):
                    await self._create_submitted()
            except (TimeoutError, Exception) as exc:
                log.warning("analytics: %d ended calls get no job (%s)", len(self._submitted),
                            type(exc).__name__)
        await cancel_all(list(self._running.values()))
        self._running.clear()
        if self.owns_llm and self._llm is not None:
            close = getattr(self._llm, "close", None)
            result = close() if close is not None else None
            if asyncio.iscoroutine(result):
                await result

    def submit(self, call_id: str) -> None:
        """The call has ended: its job is created once its turns are written. Never blocks."""
        self._submitted.append(call_id)
        self._wake.set()

    @property
    def busy(self) -> int:
        """Jobs running now."""
        return len(self._running)

    async def wait_settled(self, call_id: str) -> dict[str, Any]:
        """Wait until the call's job is done, failed or skipped; returns it as stored."""
        while True:
            changed = self._changed
            job = await self.jobs.get(call_id)
            if job is not None and job["status"] in _FINAL:
                return job
            await changed.wait()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.wall(), UTC)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        pause = _LOOP_RETRY_FIRST_S
        recovered = False
        while True:
            self._wake.clear()
            try:
                if not recovered:
                    pending = await self.jobs.recover(self.options.max_attempts, self._now())
                    recovered = True
                    if pending:
                        log.info("analytics: %d jobs pending from before", pending)
                await self._create_submitted()
                await self._reset_orphans()
                later = await self._dispatch()
            except Exception as exc:  # the database is down or slow: try again later
                log.warning("analytics: cannot reach the store (%s); retrying in %.0f s",
                            type(exc).__name__, pause)
                await self.clock.sleep(pause)
                pause = min(pause * 2, _LOOP_RETRY_MAX_S)
                continue
            pause = _LOOP_RETRY_FIRST_S
            if self._wake.is_set():
                continue
            wait = None if later is None else max(0.0, (later - self._now()).total_seconds())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _create_submitted(self) -> None:
        if not self._submitted:
            return
        if self._flush is not None:  # the call's last turns and its end, written first
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_FLUSH_WAIT_S):
                    await self._flush()
        while self._submitted:
            call_id = self._submitted[0]
            try:
                await self.jobs.create(call_id, self._now())
            except IntegrityError:  # no record of the call: never answered, or deleted
                log.info("analytics: the call has no record; no job", extra={"call_id": call_id})
            self._submitted.pop(0)

    async def _reset_orphans(self) -> None:
        for call_id in list(self._orphans):
            if call_id not in self._running:
                await self.jobs.finish(call_id, self._now(), status=PENDING,
                                       error_code="interrupted")
                self._orphans.discard(call_id)

    async def _dispatch(self) -> datetime | None:
        free = self.options.max_concurrent - len(self._running)
        if free <= 0:
            return None
        ready, later = await self.jobs.due(self._now(), self.options.max_concurrent)
        for call_id in ready:
            if free <= 0:
                break
            if call_id in self._running:
                continue
            self._running[call_id] = asyncio.create_task(
                self._job(call_id), name=f"analytics-{call_id}")
            free -= 1
        return later

    # -- one job ----------------------------------------------------------------------------
    async def _job(self, call_id: str) -> None:
        call_id_var.set(call_id)  # this task's own context: its log lines name the call
        try:
            await self._attempt(call_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the outcome could not be written: pending again later
            log.warning("analytics: cannot record the outcome (%s)", type(exc).__name__)
            self._orphans.add(call_id)
        finally:
            self._running.pop(call_id, None)
            self._notify()

    async def _attempt(self, call_id: str) -> None:
        attempt = await self.jobs.claim(call_id, self._now())
        if attempt is None:
            return
        started = self.clock.now()
        try:
            transcript = transcript_text(await self.jobs.transcript(call_id))
            if not transcript:
                await self.jobs.finish(call_id, self._now(), status=SKIPPED)
                return
            llm = await self._model()
            answer = await llm.complete_json(messages(transcript, self.fields), self.schema,
                                             self.max_tokens)
            result = validate(answer, self.fields)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(call_id, attempt, exc)
            return
        took_ms = round((self.clock.now() - started) * 1000.0, 1)
        await self.jobs.finish(call_id, self._now(), status=DONE, result=result.model_dump(),
                               model=llm.name, duration_ms=took_ms)
        self.done += 1
        log.info("analytics: done in %.0f ms (attempt %d)", took_ms, attempt)

    async def _failed(self, call_id: str, attempt: int, exc: Exception) -> None:
        self.failed_attempts += 1
        code = exc.code if isinstance(exc, InvalidResult) else error_code(exc)
        last = attempt >= self.options.max_attempts
        pause = self.options.retry_backoff_s * 2 ** (attempt - 1)
        await self.jobs.finish(
            call_id, self._now(), status=FAILED if last else PENDING, error_code=code,
            not_before=None if last else self._now() + timedelta(seconds=pause))
        if last:
            log.warning("analytics: failed after %d attempts (%s)", attempt, code)
        else:
            log.info("analytics: attempt %d failed (%s); again in %.0f s", attempt, code, pause)

    async def _model(self) -> LLM:
        async with self._loading:
            if self._llm is None:
                assert self._load is not None
                self._llm = await asyncio.to_thread(self._load)
            return self._llm


def open_analytics(config: Config, stack: Stack,
                   recorder: Recorder | None) -> AnalyticsWorker | None:
    """The server's worker over ``recorder``'s store (None: analytics off, or no store).

    The embedded model gets an instance of its own for analytics, loaded at the first job:
    ``threads`` threads at nice 19, so a live call's Whisper, LLM and Piper win the cores,
    and a slot of its own, so no caller's reply ever waits behind a summary. Any other LLM
    (a server) is shared: its requests do not run on this machine."""
    options = config.analytics
    if not options.enabled or recorder is None:
        return None
    llm: LLM | Callable[[], LLM] = stack.llm
    if config.llm.provider == "local" and stack.llm.name == "smollm":
        llm = functools.partial(_embedded, options, config.llm.redact)
    worker = AnalyticsWorker(recorder.store, llm, options, flush=recorder.flush,
                             owns_llm=not isinstance(llm, LLM))
    worker.start()
    return worker


def _embedded(options: AnalyticsOptions, redact: bool) -> LLM:
    from rejoinder.providers.local.smollm import SmolLM, SmolLMOptions

    prompt = 1536  # the form's instructions and a transcript of TRANSCRIPT_MAX_CHARS
    answer = answer_tokens(parse_fields(options.fields))
    llm = SmolLM(SmolLMOptions(threads=options.threads, parallel=options.max_concurrent,
                               max_tokens=answer, temperature=0.0, nice=19,
                               prompt_tokens=prompt, context=prompt + answer,
                               prompt_cache_mib=0))
    llm.redact = redact
    # A whole transcript is read before the first token, on one low-priority core.
    llm.first_item_timeout_s = 120.0
    llm.stream_idle_timeout_s = 30.0
    return llm
