"""Post-call analytics: a job per ended call, run in the background on the configured LLM,
retried, kept as a row across restarts, and served with the call's record."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from rejoinder.analytics.fields import parse_fields
from rejoinder.analytics.jobs import AnalyticsJobs, AnalyticsRow
from rejoinder.analytics.schema import (
    InvalidResult,
    answer_tokens,
    json_schema,
    messages,
    validate,
)
from rejoinder.analytics.worker import AnalyticsWorker
from rejoinder.config import AnalyticsOptions, Config, load_config
from rejoinder.core.errors import ConfigError
from rejoinder.observability.logs import setup_logging
from rejoinder.providers.base import ChatMessage
from rejoinder.server.app import Server
from rejoinder.store import Recorder, Store
from rejoinder.testing import FakeLLM, Latency, fake_stack

GOOD = {
    "summary": "The caller booked a table for four on Friday.",
    "intent": "booking", "sentiment": "positive", "escalate": False, "lead_score": 80,
    "slots": {"name": "Maria", "callback_number": "[phone number]",
              "reason": "table for four", "urgency": "low"},
}


def _options(**kw: Any) -> AnalyticsOptions:
    return AnalyticsOptions(**{"retry_backoff_s": 0.0, **kw})


async def _store(path: Any) -> Store:
    store = Store(f"sqlite+aiosqlite:///{path}/calls.db")
    await store.migrate()
    return store


def _record_call(recorder: Recorder, call_id: str) -> Any:
    """A call whose one turn has finished (its conversation's events); not yet ended."""
    log = recorder.call(call_id, transport="webrtc", agent="Rejoinder")
    log.begin()
    for e in ({"type": "user", "turn": 1, "text": "hi, Maria here, call me on 555 123 4567"},
              {"type": "agent", "turn": 1, "text": "Booked for Friday."},
              {"type": "trace", "turn": 1, "outcome": "completed", "ms_after_speech_end": {}}):
        log.on_event(e)
    return log


async def _settled(worker: AnalyticsWorker, call_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):  # a hang fails the test instead of holding the suite
        return await worker.wait_settled(call_id)


@pytest.fixture
async def api(tmp_path) -> AsyncIterator[tuple[TestClient, Server, FakeLLM, list[bool]]]:  # type: ignore[type-arg]
    store = await _store(tmp_path)
    recorder = Recorder(store, owns_store=True)
    recorder.start()
    live_when_asked: list[bool] = []
    server: Server

    def reply(messages: list[ChatMessage]) -> str:
        live_when_asked.append(bool(server.call_logs))
        return json.dumps(GOOD)

    llm = FakeLLM(reply)
    worker = AnalyticsWorker(store, llm, _options(), flush=recorder.flush)
    worker.start()
    server = Server(Config(), fake_stack(llm=llm), recorder, worker)
    client = TestClient(TestServer(server.app(), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, server, llm, live_when_asked
    finally:
        await client.close()
        await worker.close()
        await recorder.close()


def _end_through_the_server(server: Server, call_id: str) -> None:
    """The server's own end-of-call path (what a closed Call reports)."""
    call = SimpleNamespace(id=call_id, transport=SimpleNamespace(failed=False),
                           conversation=SimpleNamespace(traces=[]))
    server._forget(call)  # type: ignore[arg-type]


async def test_a_job_runs_after_the_call_and_the_api_returns_its_result(api) -> None:
    client, server, llm, live_when_asked = api
    assert server.recorder is not None and server.analytics is not None
    server.call_logs["c1"] = _record_call(server.recorder, "c1")

    # While the call lasts: its turns are written, but no job exists and no model is asked.
    await server.recorder.flush()
    for _ in range(50):
        await asyncio.sleep(0)
    body = await (await client.get("/api/calls/c1")).json()
    assert body["active"] is False  # no Call object: only the record is live
    assert (body["analytics"], body["analytics_status"]) == (None, None)
    assert llm.requests == []

    _end_through_the_server(server, "c1")
    job = await _settled(server.analytics, "c1")
    assert job["status"] == "done" and job["attempts"] == 1
    assert live_when_asked == [False]  # the model was asked only once the call had ended

    # The model read the stored transcript, redacted: the number never reached it.
    prompt = "\n".join(m.content for m in llm.requests[0])
    assert "Caller: hi, Maria here, call me on [phone number]" in prompt
    assert "Agent: Booked for Friday." in prompt and "4567" not in prompt

    body = await (await client.get("/api/calls/c1")).json()
    assert body["analytics_status"] == "done"
    assert body["analytics"] == {**GOOD, "fields": {}}
    assert body["analytics_job"]["model"] == "fake-llm"

    # Deleting the call deletes its analytics (personal data) too.
    assert (await client.delete("/api/calls/c1")).status == 200
    async with server.recorder.store.engine.connect() as conn:
        assert (await conn.execute(select(AnalyticsRow.call_id))).all() == []


async def test_a_pending_job_is_served_as_null_with_its_status(api) -> None:
    client, server, _, _ = api
    assert server.recorder is not None
    _record_call(server.recorder, "c2").end("ended")
    await server.recorder.flush()
    jobs = AnalyticsJobs(server.recorder.store)
    await jobs.create("c2", server.recorder.now())  # created; the worker was not told
    body = await (await client.get("/api/calls/c2")).json()
    assert (body["analytics"], body["analytics_status"]) == (None, "pending")


async def test_a_job_that_keeps_failing_is_retried_then_marked_failed(tmp_path) -> None:
    store = await _store(tmp_path)
    recorder = Recorder(store, owns_store=True)
    recorder.start()
    llm = FakeLLM([json.dumps(GOOD)], Latency(fail="drop"))  # the stream breaks every time
    worker = AnalyticsWorker(store, llm, _options(max_attempts=3), flush=recorder.flush)
    worker.start()
    try:
        _record_call(recorder, "c3").end("ended")
        worker.submit("c3")
        job = await _settled(worker, "c3")
        assert (job["status"], job["attempts"], job["error_code"]) == ("failed", 3, "llm_failed")
        assert job["result"] is None
        assert len(llm.requests) == 3
    finally:
        await worker.close()
        await recorder.close()


async def test_a_jobs_log_lines_name_its_call_in_the_call_id_field(tmp_path, capsys) -> None:
    """Not in the message, where redaction takes a hex id's digits for a number."""
    call_id = "4e7fd4774cc0485b8c7dd43f405f92d6"  # the server's ids look like this
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging("info", json_lines=True)
    store = await _store(tmp_path)
    recorder = Recorder(store, owns_store=True)
    recorder.start()
    worker = AnalyticsWorker(store, FakeLLM(["not json", json.dumps(GOOD)]),
                             _options(retry_backoff_s=0.01), flush=recorder.flush)
    worker.start()
    try:
        _record_call(recorder, call_id).end("ended")
        worker.submit(call_id)
        assert (await _settled(worker, call_id))["status"] == "done"
        worker.submit("never-recorded")
        err = ""
        async with asyncio.timeout(10):
            while "no job" not in err:
                await asyncio.sleep(0.01)
                err += capsys.readouterr().err
    finally:
        await worker.close()
        await recorder.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = [json.loads(line) for line in err.splitlines()]
    ours = [line for line in lines if line["msg"].startswith("analytics:")]
    assert [line["msg"].split(" ")[1] for line in ours] == ["attempt", "done", "the"]
    assert [line["call_id"] for line in ours] == [call_id, call_id, "never-recorded"]
    assert not any("[" in line["msg"] for line in ours)


async def test_a_failed_attempt_waits_its_backoff_before_the_next(tmp_path) -> None:
    store = await _store(tmp_path)
    recorder = Recorder(store, owns_store=True)
    recorder.start()
    llm = FakeLLM(["not json"])
    worker = AnalyticsWorker(store, llm, _options(max_attempts=3, retry_backoff_s=600.0),
                             flush=recorder.flush)
    worker.start()
    try:
        _record_call(recorder, "c4").end("ended")
        worker.submit("c4")
        async with asyncio.timeout(10):
            while not llm.requests or worker.busy:  # noqa: ASYNC110 (the worker's own pace)
                await asyncio.sleep(0.01)
        async with store.engine.connect() as conn:
            row = (await conn.execute(select(AnalyticsRow.__table__))).mappings().one()
        assert (row["status"], row["attempts"], row["error_code"]) == (
            "pending", 1, "invalid_json")
        assert (row["not_before"] - row["updated_at"]).total_seconds() == pytest.approx(600.0)
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(llm.requests) == 1  # not again before its time
    finally:
        await worker.close()
        await recorder.close()


@pytest.mark.parametrize("answers, code", [
    (["{\"summary\": \"cut short", json.dumps(GOOD)], "invalid_json"),
    ([json.dumps({**GOOD, "sentiment": "furious"}), json.dumps(GOOD)], "invalid_schema"),
    ([json.dumps({**GOOD, "lead_score": 140}), json.dumps(GOOD)], "invalid_schema"),
], ids=["not-json", "bad-enum", "score-out-of-range"])
async def test_an_answer_that_does_not_validate_is_a_failed_attempt(tmp_path, answers,
                                                                     code) -> None:
    store = await _store(tmp_path)
    recorder = Recorder(store, owns_store=True)
    recorder.start()
    llm = FakeLLM(answers)
    worker = AnalyticsWorker(store, llm, _options(max_attempts=1), flush=recorder.flush)
    worker.start()
    try:
        _record_call(recorder, "bad").end("ended")
        worker.submit("bad")
        job = await _settled(worker, "bad")
        assert (job["status"], job["attempts"], job["error_code"]) == ("failed", 1, code)
    finally:
        await worker.close()
    # With a second attempt allowed, the next (valid) answer is stored.
    llm2 = FakeLLM(answers)
    worker = AnalyticsWorker(store, llm2, _options(max_attempts=2), flush=recorder.flush)
    worker.start()
    try:
        _record_call(recorder, "retry").end("ended")
        worker.submit("retry")
        job = await _settled(worker, "retry")
        assert (job["status"], job["attempts"]) == ("done", 2)
        assert job["result"]["intent"] == "booking"
    finally:
        await worker.close()
        await recorder.close()


async def test_pending_and_interrupted_jobs_survive_a_restart(tmp_path) -> None:
    store = await _store(tmp_path)
    recorder = Recorder(store, owns_store=True)
    recorder.start()
    hung = FakeLLM([json.dumps(GOOD)], Latency(fail="timeout"))  # never answers
    worker = AnalyticsWorker(store, hung, _options(), flush=recorder.flush)
    worker.start()
    _record_call(recorder, "running").end("ended")
    _record_call(recorder, "waiting").end("ended")
    worker.submit("running")
    worker.submit("waiting")  # one at a time: this one waits behind the hung one
    async with asyncio.timeout(10):
        while not hung.requests:  # noqa: ASYNC110 (the worker's own pace)
            await asyncio.sleep(0.01)
    await worker.close()  # the server stops (or is killed) mid-job
    await recorder.close()
    statuses = {}
    async with Store(f"sqlite+aiosqlite:///{tmp_path}/calls.db").engine.connect() as conn:
        for call_id, status in await conn.execute(
                select(AnalyticsRow.call_id, AnalyticsRow.status)):
            statuses[call_id] = status
    assert statuses == {"running": "running", "waiting": "pending"}

    # A new server over the same file takes both up.
    store = await _store(tmp_path)
    llm = FakeLLM([json.dumps(GOOD)])
    worker = AnalyticsWorker(store, llm, _options())
    worker.start()
    try:
        for call_id in ("running", "waiting"):
            job = await _settled(worker, call_id)
            assert job["status"] == "done" and job["result"]["summary"] == GOOD["summary"]
        assert len(llm.requests) == 2
    finally:
        await worker.close()
        await store.close()


async def test_a_call_with_no_words_is_skipped_without_asking_the_model(tmp_path) -> None:
    store = await _store(tmp_path)
    recorder = Recorder(store, owns_store=True)
    recorder.start()
    llm = FakeLLM([json.dumps(GOOD)])
    worker = AnalyticsWorker(store, llm, _options(), flush=recorder.flush)
    worker.start()
    try:
        log = recorder.call("quiet", transport="webrtc", agent="Rejoinder")
        log.begin()
        log.end("ended")
        worker.submit("quiet")
        worker.submit("never-answered")  # no record at all: no job, and the worker goes on
        assert (await _settled(worker, "quiet"))["status"] == "skipped"
        assert llm.requests == []
        assert await worker.jobs.get("never-answered") is None
    finally:
        await worker.close()
        await recorder.close()


async def test_extra_fields_are_asked_for_and_validated(tmp_path) -> None:
    store = await _store(tmp_path)
    recorder = Recorder(store, owns_store=True)
    recorder.start()
    fields = ["party_size:integer", "plan:basic|pro"]
    answers = [json.dumps({**GOOD, "fields": {"party_size": "four", "plan": "pro"}}),
               json.dumps({**GOOD, "fields": {"party_size": 4, "plan": None}})]
    llm = FakeLLM(answers)
    worker = AnalyticsWorker(store, llm, _options(fields=fields, max_attempts=2),
                             flush=recorder.flush)
    worker.start()
    try:
        _record_call(recorder, "f").end("ended")
        worker.submit("f")
        job = await _settled(worker, "f")
        assert (job["status"], job["attempts"]) == ("done", 2)  # "four" is no integer
        assert job["result"]["fields"] == {"party_size": 4, "plan": None}
        assert "fields.plan: one of basic, pro" in llm.requests[0][0].content
    finally:
        await worker.close()
        await recorder.close()


# -- the schema and the configuration ---------------------------------------------------------
def test_llama_cpp_accepts_the_schema() -> None:
    import xllamacpp

    schema = json_schema(parse_fields(["plan:a|b", "n"]))
    grammar = xllamacpp.json_schema_to_grammar(schema)  # raises on what it cannot hold
    assert '"lead_score"' in grammar or "lead-score" in grammar  # GBNF or llguidance


def test_validation_refuses_extra_keys_and_empty_summaries() -> None:
    for bad in ({**GOOD, "mood": "x"}, {**GOOD, "summary": "  "},
                {**GOOD, "fields": {"x": 1}}, [GOOD]):
        with pytest.raises(InvalidResult):
            validate(json.dumps(bad))
    assert validate(json.dumps(GOOD)).lead_score == 80


def test_a_long_transcript_is_cut_in_the_middle() -> None:
    turns = [(f"caller words {i}", f"agent words {i}") for i in range(400)]
    from rejoinder.analytics.schema import TRANSCRIPT_MAX_CHARS, transcript_text

    text = transcript_text(turns)
    assert len(text) <= TRANSCRIPT_MAX_CHARS + 10
    assert text.startswith("Caller: caller words 0") and text.endswith("agent words 399")
    assert messages(text)[1].content.count("[...]") == 1


@pytest.mark.parametrize("value, words", [
    ("Name", "a name is"), ("summary", "standard field"), ("a:x|x", "repeated"),
    ("a:float", "the type is"), ("a,a", "given twice"),
])
def test_bad_fields_are_refused_naming_the_setting(value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        load_config(env={"REJOINDER_ANALYTICS__FIELDS": value})
    assert info.value.field == "analytics.fields"


def test_fields_from_the_environment() -> None:
    config = load_config(env={"REJOINDER_ANALYTICS__FIELDS": "order_number,plan:basic|pro",
                              "REJOINDER_ANALYTICS__ENABLED": "false"})
    assert config.analytics.fields == ["order_number", "plan:basic|pro"]
    assert config.analytics.enabled is False


# -- the embedded model ----------------------------------------------------------------------
@pytest.mark.slow
async def test_the_embedded_model_with_the_grammar_answers_a_valid_form() -> None:
    from rejoinder.analytics.worker import _embedded

    options = AnalyticsOptions(fields=["party_size:integer", "plan:basic|pro"])
    extra = parse_fields(options.fields)
    llm = _embedded(options, redact=True)
    try:
        transcript = ("Caller: Hi, this is Tom. I'd like to book a table for four on "
                      "Friday at seven, you can reach me on [phone number].\n"
                      "Agent: Done, a table for four on Friday at seven.")
        answer = await llm.complete_json(messages(transcript, extra),
                                         json_schema(extra), answer_tokens(extra))
        result = validate(answer, extra)  # parses and validates: the grammar held it
        assert result.summary and set(result.fields) == {"party_size", "plan"}
    finally:
        llm.close()


async def test_revision_0003_adds_the_table_and_downgrades(tmp_path) -> None:
    from alembic import command

    from rejoinder.store.db import _alembic_config

    store = Store(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0002"))
        await store.migrate()
        jobs = AnalyticsJobs(store)
        from datetime import UTC, datetime

        from rejoinder.store import CallStart
        now = datetime.now(UTC)
        await store.write([CallStart("c1", "webrtc", "A", now)])
        await jobs.create("c1", now)
        assert (await jobs.get("c1") or {})["status"] == "pending"
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0002"))
            tables = await conn.run_sync(
                lambda c: c.exec_driver_sql("SELECT name FROM sqlite_master").scalars().all())
        assert "call_analytics" not in tables and "calls" in tables
    finally:
        await store.close()


async def test_an_openai_compatible_server_is_asked_for_the_schema() -> None:
    from aiohttp import web

    from rejoinder.providers.openai.llm import OpenAILLM

    seen: list[dict[str, Any]] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        text = json.dumps(GOOD)
        for piece in (text[:20], text[20:]):
            chunk = {"choices": [{"delta": {"content": piece}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    llm = OpenAILLM(f"http://127.0.0.1:{port}/v1", "m")
    try:
        schema = json_schema()
        answer = await llm.complete_json(
            messages("Caller: my number is 555 123 4567"), schema, 500)
        assert validate(answer).intent == "booking"
        body = seen[0]
        assert body["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "call_analytics", "strict": True, "schema": schema}}
        assert (body["temperature"], body["max_tokens"]) == (0.0, 500)
        assert "4567" not in json.dumps(body["messages"])  # redacted on the way out too
    finally:
        await llm.close()
        await runner.cleanup()


def test_the_labelled_set_and_its_scoring() -> None:
    from rejoinder.bench.analytics import FIELDS, load_set, majority_baseline, score

    items = load_set()
    assert len(items) >= 20
    assert {i["expected"]["intent"] for i in items} >= {
        "booking", "complaint", "sales_inquiry", "wrong_number", "cancellation", "support"}
    assert sum(i["expected"]["escalate"] for i in items) >= 3
    right = score(validate(json.dumps(GOOD)), items[0]["expected"])  # booking-table
    assert right == {f: True for f in FIELDS}
    assert score(validate(json.dumps({**GOOD, "lead_score": 60})),
                 items[0]["expected"])["lead_score"] is False  # 25 from 85: outside 20
    assert score(None, items[0]["expected"]) == {f: False for f in FIELDS}
    assert majority_baseline(items)["escalate"] >= 0.8  # most calls need no person
