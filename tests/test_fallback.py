"""Provider fallback chains, circuit breakers and routing, on virtual time with fakes.

Each failure kind (an error before the first item, a first item that never comes, a
stream that stalls midway, a stream that drops midway) on each kind of provider is
replaced by the next backend within the same request, with the exact time it adds; the
caller hears no clause twice and no half clause.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pytest

from rejoinder.core.clock import Clock
from rejoinder.core.errors import ProviderError
from rejoinder.observability.logs import call_id_var
from rejoinder.providers.base import LLM, STT, TTS, ChatMessage
from rejoinder.providers.breaker import CLOSED, HALF_OPEN, OPEN, BreakerOptions, CircuitBreaker
from rejoinder.providers.fallback import Backend, FallbackLLM, FallbackSTT, FallbackTTS
from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack, run_virtual
from rejoinder.testing.loopback import converse
from rejoinder.tools.base import ToolCall
from rejoinder.turn.clauses import split_clauses

approx = lambda x: pytest.approx(x, abs=1e-9)  # noqa: E731

REPLY = "Sure, the salon opens at nine. On Saturdays it opens at ten."
ASK = [ChatMessage("user", "when do you open")]
# A backend that fails before its first item, never sends one, stalls or drops after 8 words
# ("Sure, the salon opens at nine. On Saturdays" | "it opens at ten.").
BEFORE = Latency(fail="drop", fail_after=0)
NEVER = Latency(fail="timeout")
STALL = Latency(per_item_s=0.1, fail="stall", fail_after=8)
DROP = Latency(per_item_s=0.1, fail="drop", fail_after=8)


def _backend(name: str, provider: STT | LLM | TTS, **kwargs: object) -> Backend:  # type: ignore[type-arg]
    breaker = CircuitBreaker("x", name, BreakerOptions(
        failures=int(kwargs.pop("failures", 3)),  # type: ignore[call-overload]
        window_s=60.0, cooldown_s=float(kwargs.pop("cooldown_s", 30.0))))  # type: ignore[arg-type]
    return Backend(name, provider, breaker=breaker, **kwargs)  # type: ignore[arg-type]


def _limits(p: LLM | TTS, first: float = 1.0, idle: float = 0.5) -> None:
    p.first_item_timeout_s, p.stream_idle_timeout_s = first, idle


async def _collect(llm: LLM, messages: list[ChatMessage] = ASK,
                   tools: Sequence[object] = ()) -> tuple[list[object], float]:
    out: list[object] = []
    async for item in llm.stream(messages, tools):  # type: ignore[arg-type]
        out.append(item)
    return out, Clock().now()


def _continuing(text: str) -> FakeLLM:
    """A fallback that continues a reply given as an assistant prefix."""
    def reply(messages: list[ChatMessage]) -> str:
        if messages[-1].role == "assistant":
            return text[len(messages[-1].content):].strip()
        return text
    return FakeLLM(reply, Latency(first_s=0.3, per_item_s=0.1))


# -- LLM -----------------------------------------------------------------------------


@pytest.mark.parametrize(("failure", "added"), [
    (BEFORE, 0.0),  # fails at once
    (NEVER, 1.0),  # its first-token limit
])
def test_an_llm_that_fails_before_its_first_token_is_replaced_within_the_request(
        failure: Latency, added: float) -> None:
    primary = FakeLLM([REPLY], failure)
    _limits(primary)
    backup = FakeLLM([REPLY], Latency(first_s=0.3, per_item_s=0.1))
    chain = FallbackLLM([_backend("a", primary), _backend("b", backup)])

    items, end = run_virtual(_collect(chain))
    assert "".join(map(str, items)) == REPLY
    # The backup's own time (0.3 s, then 11 more words 0.1 s apart) plus exactly what the
    # failure cost.
    assert end == approx(added + 0.3 + 1.1)
    assert len(backup.requests) == 1 and backup.requests[0] == ASK
    assert chain.stats.counts[("fallback", "llm", "a", "timeout" if added else "failed")] == 1
    assert chain.stats.counts[("timeout", "llm", "a", "")] == (1 if added else 0)


# The 8th word comes at 0.7 s; the drop shows when the 9th is due (0.8 s), the stall when
# the idle limit (0.5 s) has passed since the 8th (1.2 s).
@pytest.mark.parametrize(("failure", "failed_at"), [(STALL, 1.2), (DROP, 0.8)])
@pytest.mark.parametrize("fallback", ["continues", "restarts"])
def test_an_llm_reply_broken_midway_goes_on_from_the_next_clause_without_repeats(
        failure: Latency, failed_at: float, fallback: str) -> None:
    primary = FakeLLM([REPLY], failure)
    _limits(primary)
    backup = _continuing(REPLY) if fallback == "continues" else \
        FakeLLM([REPLY], Latency(first_s=0.3, per_item_s=0.1))
    chain = FallbackLLM([_backend("a", primary), _backend("b", backup)])

    items, end = run_virtual(_collect(chain))
    text = "".join(map(str, items))
    # "On Saturdays" (the half clause the primary left) was never relayed; the reply the
    # caller hears is whole, each clause once.
    assert text == REPLY
    assert split_clauses(text) == ["Sure, the salon opens at nine.",
                                   "On Saturdays it opens at ten."]
    # The backup was told what was already said, as the reply's beginning.
    assert backup.requests[0][-1] == ChatMessage("assistant", "Sure, the salon opens at nine.")
    words = 6 if fallback == "continues" else 12  # the backup's: its first after 0.3 s
    assert end == approx(failed_at + 0.3 + (words - 1) * 0.1)


def test_text_is_relayed_at_clause_ends_only() -> None:
    llm = FakeLLM([REPLY], Latency(per_item_s=0.1))
    chain = FallbackLLM([_backend("a", llm)])
    items, _ = run_virtual(_collect(chain))
    assert items == ["Sure,", " the salon opens at nine.", " On Saturdays it opens at ten."]


def test_tools_are_passed_through_and_tool_calls_relayed_untouched() -> None:
    call = ToolCall("c1", "find_slots", '{"day": "monday"}')
    primary = FakeLLM([["Let me look.", call]], BEFORE)
    backup = FakeLLM([["Let me look.", call]])
    chain = FallbackLLM([_backend("a", primary), _backend("b", backup)])

    class _Tool:
        name = "find_slots"

    items, _ = run_virtual(_collect(chain, tools=[_Tool()]))
    assert items == ["Let me look.", call]
    assert items[1] is call
    assert backup.offered == [("find_slots",)]


def test_a_stream_that_breaks_after_a_tool_call_ends_without_asking_again() -> None:
    call = ToolCall("c1", "find_slots", "{}")
    primary = FakeLLM([[call, "and then some more words"]], Latency(fail="drop", fail_after=2))
    backup = FakeLLM(["never"])
    chain = FallbackLLM([_backend("a", primary), _backend("b", backup)])

    class _Tool:
        name = "find_slots"

    items, _ = run_virtual(_collect(chain, tools=[_Tool()]))
    assert items == [call]  # the tool runs once; the reply asks the chain again after it
    assert backup.requests == []


def test_when_every_backend_fails_the_last_error_is_raised() -> None:
    a, b = FakeLLM([REPLY], BEFORE), FakeLLM([REPLY], NEVER)
    _limits(b)
    chain = FallbackLLM([_backend("a", a), _backend("b", b)])
    with pytest.raises(ProviderError) as caught:
        run_virtual(_collect(chain))
    assert caught.value.failure == "timeout"


def test_a_json_answer_comes_from_the_next_backend_when_one_fails() -> None:
    # Post-call analytics ask the chain for one whole JSON answer (complete_json).
    chain = FallbackLLM([_backend("a", FakeLLM(['{"lost": 1}'], BEFORE)),
                         _backend("b", FakeLLM(['{"summary": "ok"}']))])
    answer = run_virtual(chain.complete_json(ASK, {"type": "object"}, 50))
    assert answer == '{"summary": "ok"}'
    assert chain.stats.counts[("fallback", "llm", "a", "failed")] == 1


def test_a_caller_hears_each_clause_once_when_the_llm_drops_midway() -> None:
    """A whole turn: the primary drops after "Sure, the salon opens at nine. On Saturdays";
    the caller hears every clause once, whole, and the history has the whole reply."""
    primary = FakeLLM([REPLY], Latency(first_s=0.2, per_item_s=0.05, fail="drop",
                                       fail_after=8))
    backup = _continuing(REPLY)
    tts = FakeTTS()
    stack = fake_stack(stt=FakeSTT(["when do you open"], Latency(first_s=0.1)),
                       llm=FallbackLLM([_backend("a", primary), _backend("b", backup)]),
                       tts=tts)
    conv, ear, _ = run_virtual(converse(stack, [("silence", 0.5), ("speech", 1.0)]))
    assert [t["outcome"] for t in conv.traces] == ["completed"]
    assert tts.spoken == ["Sure, the salon opens at nine.", "On Saturdays it opens at ten."]
    assert conv.history[-1] == ChatMessage("assistant", REPLY)


# -- TTS -----------------------------------------------------------------------------


async def _speak(tts: TTS, text: str) -> tuple[list[np.ndarray], float]:
    chunks = [c async for c in tts.synthesize(text)]
    return chunks, Clock().now()


@pytest.mark.parametrize(("failure", "added", "said"), [
    (Latency(first_s=0.05, fail="drop", fail_after=0), 0.05, 0),  # an error, nothing said
    (Latency(fail="timeout"), 1.0, 0),  # no first audio within 1 s
    (Latency(first_s=0.05, fail="stall", fail_after=3), 0.05 + 0.5, 3),  # idle 0.5 s
    (Latency(first_s=0.05, fail="drop", fail_after=3), 0.05, 3),
])
def test_a_tts_that_fails_says_the_whole_clause_on_the_next(
        failure: Latency, added: float, said: int) -> None:
    primary = FakeTTS(failure, chunk_s=0.1, sample_rate=16_000)
    _limits(primary)
    backup = FakeTTS(Latency(first_s=0.2), chunk_s=0.1, sample_rate=16_000)
    chain = FallbackTTS([_backend("a", primary), _backend("b", backup)])

    chunks, end = run_virtual(_speak(chain, "one two three four"))  # 1 s: 10 chunks
    assert backup.spoken == ["one two three four"]  # the whole clause, again
    assert len(chunks) == said + 10
    assert end == approx(added + 0.2)


def test_a_tts_fallback_at_another_rate_is_resampled_to_the_chain_rate() -> None:
    primary = FakeTTS(BEFORE, sample_rate=24_000)
    backup = FakeTTS(sample_rate=16_000)
    chain = FallbackTTS([_backend("a", primary), _backend("b", backup)])
    assert chain.sample_rate == 24_000
    chunks, _ = run_virtual(_speak(chain, "one two"))  # 0.5 s
    assert sum(len(c) for c in chunks) == 12_000


# -- STT -----------------------------------------------------------------------------


@pytest.mark.parametrize(("failure", "added"), [(BEFORE, 0.0), (NEVER, 2.0)])
def test_an_stt_that_fails_is_retried_on_the_next_with_the_same_audio(
        failure: Latency, added: float) -> None:
    heard: list[int] = []

    def transcript(audio: np.ndarray) -> str:
        heard.append(len(audio))
        return "when do you open"

    primary = FakeSTT(["lost"], failure)
    primary.timeout_s = primary.stream_idle_timeout_s = 2.0
    backup = FakeSTT(transcript, Latency(first_s=0.15))
    chain = FallbackSTT([_backend("a", primary), _backend("b", backup)])

    async def utterance() -> tuple[str, float]:
        session = chain.session()
        for _ in range(50):  # 1 s of 20 ms frames
            await session.push(np.ones(320, np.int16), True)
        return await session.finish(), Clock().now()

    text, end = run_virtual(utterance())
    assert text == "when do you open"
    assert heard == [16_000]
    assert end == approx(added + 0.15)


# -- circuit breaker -----------------------------------------------------------------


def test_the_breaker_opens_after_n_failures_keeps_requests_away_then_a_probe_closes_it(
        caplog: pytest.LogCaptureFixture) -> None:
    primary = FakeLLM(["Fine."], BEFORE)
    backup = FakeLLM(["Backup."])
    a = _backend("a", primary, failures=2, cooldown_s=30.0)
    chain = FallbackLLM([a, _backend("b", backup)])

    async def scenario() -> list[str]:
        call_id_var.set("call-7")
        states = []
        for _ in range(2):  # two failures: open
            await _collect(chain)
        states.append(a.breaker.state)
        await Clock().sleep(29.0)
        await _collect(chain)  # still cooling down: never reaches the primary
        states.append(a.breaker.state)
        requests = len(primary.requests)
        await Clock().sleep(1.0)
        primary._waits.latency = Latency()  # it has recovered
        items, _ = await _collect(chain)  # the probe, and it answers
        states.append(a.breaker.state)
        assert items == ["Fine."]
        assert requests == 2 and len(primary.requests) == 3
        return states

    with caplog.at_level(logging.WARNING, logger="rejoinder.providers.breaker"):
        states = run_virtual(scenario())
    assert states == [OPEN, OPEN, CLOSED]
    counts = chain.stats.counts
    assert counts[("breaker", "llm", "a", OPEN)] == 1
    assert counts[("breaker", "llm", "a", HALF_OPEN)] == 1
    assert counts[("breaker", "llm", "a", CLOSED)] == 1
    assert counts[("fallback", "llm", "a", "open")] == 1  # skipped once, while open
    assert len(backup.requests) == 3
    lines = [r for r in caplog.records if "circuit" in r.getMessage()]
    assert [r.getMessage().split(": ")[1] for r in lines] == [
        "circuit closed -> open for 30 s", "circuit open -> half_open",
        "circuit half_open -> closed"]


def test_a_failed_probe_opens_the_breaker_again_and_one_probe_at_a_time() -> None:
    clock_now = [0.0]

    class _Clock(Clock):
        def now(self) -> float:
            return clock_now[0]

    b = CircuitBreaker("llm", "a", BreakerOptions(failures=1, cooldown_s=10.0), _Clock())
    b.failed()
    assert b.state == OPEN and not b.allow()
    clock_now[0] = 10.0
    assert b.allow() and b.state == HALF_OPEN
    assert not b.allow()  # the probe is out
    b.released()  # cancelled by a barge-in: no verdict, another may probe
    assert b.allow()
    b.failed()
    assert b.state == OPEN and not b.allow()
    clock_now[0] = 19.9
    assert not b.allow()
    clock_now[0] = 20.0
    assert b.allow()


def test_failures_outside_the_window_do_not_open_the_breaker() -> None:
    clock_now = [0.0]

    class _Clock(Clock):
        def now(self) -> float:
            return clock_now[0]

    b = CircuitBreaker("llm", "a", BreakerOptions(failures=2, window_s=5.0), _Clock())
    b.failed()
    clock_now[0] = 5.1
    b.failed()
    assert b.state == CLOSED
    b.failed()
    assert b.state == OPEN


# -- routing -------------------------------------------------------------------------


def test_routing_picks_the_backend_by_what_the_turn_needs() -> None:
    fast, tools, general = FakeLLM(["fast"]), FakeLLM(["tools"]), FakeLLM(["general"])
    chain = FallbackLLM([_backend("fast", fast, max_words=5),
                         _backend("tools", tools, route="tools"),
                         _backend("general", general)])

    class _Tool:
        name = "find_slots"

    short = [ChatMessage("user", "hi there")]
    long = [ChatMessage("user", "could you tell me when the salon opens on saturdays")]
    assert [b.name for b in chain.order(short, False)] == ["fast", "general", "tools"]
    assert [b.name for b in chain.order(long, False)] == ["general", "fast", "tools"]
    assert [b.name for b in chain.order(long, True)] == ["tools", "general", "fast"]
    assert run_virtual(_collect(chain, long, [_Tool()]))[0] == ["tools"]
    assert run_virtual(_collect(chain, short))[0] == ["fast"]
    assert run_virtual(_collect(chain, long))[0] == ["general"]


# -- lazily loaded last resort ------------------------------------------------------


def test_the_local_last_resort_is_loaded_on_first_use_only() -> None:
    loads: list[int] = []
    local = FakeLLM(["Local."])

    async def load() -> LLM:
        loads.append(1)
        await Clock().sleep(1.5)  # what loading the embedded model costs, once
        return local

    chain = FallbackLLM([_backend("a", FakeLLM(["Remote."], BEFORE)),
                         Backend("local", load=load)])

    async def twice() -> tuple[float, float]:
        _, first = await _collect(chain)
        _, second = await _collect(chain)
        return first, second - first

    first, second = run_virtual(twice())
    assert loads == [1]
    assert (first, second) == (approx(1.5), approx(0.0))


# -- configuration and the stack ----------------------------------------------------

BACKENDS = """
[llm]
fallback_to_local = true
[[llm.backends]]
provider = "openai"
base_url = "http://primary.example/v1"
model = "big"
route = "tools"
[[llm.backends]]
name = "fast"
provider = "openai"
base_url = "http://fallback.example/v1"
model = "small"
max_words = 8
timeout_s = 2.0
breaker_failures = 5
[[tts.backends]]
provider = "remote"
url = "http://tts.example"
[[tts.backends]]
provider = "local"
"""


def _load(tmp_path: object, text: str) -> object:
    from pathlib import Path

    from rejoinder.config import load_config

    path = Path(str(tmp_path)) / "rejoinder.toml"
    path.write_text(text)
    return load_config(path, env={})


def test_backends_lists_are_read_in_order(tmp_path: object) -> None:
    config = _load(tmp_path, BACKENDS)
    llm = config.llm  # type: ignore[attr-defined]
    assert [b.model for b in llm.backends] == ["big", "small"]
    assert (llm.backends[0].route, llm.backends[1].max_words) == ("tools", 8)
    assert (llm.backends[1].timeout_s, llm.backends[1].breaker_failures) == (2.0, 5)
    assert llm.fallback_to_local
    assert [b.provider for b in config.tts.backends] == ["remote", "local"]  # type: ignore[attr-defined]
    assert config.stt.backends == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("change", "field"), [
    (("model = \"small\"", ""), "llm.backends[1].model"),
    (("max_words = 8", "max_words = -1"), "llm.backends[1].max_words"),
    (("max_words = 8", "max_words = \"eight\""), "llm.backends[1].max_words"),
    (("route = \"tools\"", "route = \"vision\""), "llm.backends[0].route"),
    (("timeout_s = 2.0", "timeout_s = 0.0"), "llm.backends[1].timeout_s"),
    (("breaker_failures = 5", "breaker_failures = 0"), "llm.backends[1].breaker_failures"),
    (("breaker_failures = 5", "modle = \"x\""), "llm.backends[1].modle"),
    (("url = \"http://tts.example\"", "url = \"tts.example\""), "tts.backends[0].url"),
    (("name = \"fast\"", "name = \"\"\nname2 = 1"), "llm.backends[1].name2"),
])
def test_a_bad_backend_entry_is_named_by_its_place(tmp_path: object, change: tuple[str, str],
                                                   field: str) -> None:
    from rejoinder.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, BACKENDS.replace(*change))
    assert caught.value.field == field


def test_backends_and_a_section_provider_together_are_refused(tmp_path: object) -> None:
    from rejoinder.core.errors import ConfigError

    text = BACKENDS.replace("[llm]\n", "[llm]\nprovider = \"openai\"\nmodel = \"m\"\n")
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert caught.value.field == "llm.backends"


def test_without_backends_the_stack_has_its_single_providers(tmp_path: object) -> None:
    from rejoinder.providers.factory import build_stack

    stack = build_stack(_load(tmp_path, ""), "fake")  # type: ignore[arg-type]
    assert isinstance(stack.llm, FakeLLM) and isinstance(stack.stt, FakeSTT)
    assert isinstance(stack.tts.inner, FakeTTS)  # type: ignore[attr-defined]


def test_the_stack_builds_chains_from_backends(tmp_path: object) -> None:
    from rejoinder.providers.factory import build_stack
    from rejoinder.providers.fallback import chain_counts

    stack = build_stack(_load(tmp_path, BACKENDS), "fake")  # type: ignore[arg-type]
    assert isinstance(stack.llm, FallbackLLM)
    backends = stack.llm.chain.backends
    assert [b.name for b in backends] == ["openai-0", "fast", "local"]
    assert backends[0].provider.first_item_timeout_s == 10.0  # type: ignore[union-attr]
    assert backends[1].provider.first_item_timeout_s == 2.0  # type: ignore[union-attr]
    assert backends[1].breaker.options.failures == 5
    assert backends[2].provider is None  # loaded on first use
    tts = stack.tts.inner  # type: ignore[attr-defined]
    assert isinstance(tts, FallbackTTS) and tts.sample_rate == 24_000
    assert [b.name for b in tts.chain.backends] == ["remote-0", "local-1"]
    assert isinstance(stack.stt, FakeSTT)
    # The phrase cache around the chain sets no limit of its own either.
    assert stack.tts.first_item_timeout_s == tts.first_item_timeout_s  # type: ignore[attr-defined]
    counts = chain_counts(stack.stt, stack.llm, stack.tts)
    assert counts is not None
    stack.llm.stats.count("fallback", "llm", "openai-0", "timeout")
    assert tts.stats is stack.llm.stats  # one count for the stack
    assert counts()[("fallback", "llm", "openai-0", "timeout")] == 1


def test_fallback_counts_are_exposed_as_metrics() -> None:
    from rejoinder.observability.metrics import Metrics
    from rejoinder.providers.breaker import FallbackStats

    stats = FallbackStats()
    stats.count("fallback", "llm", "primary", "timeout")
    stats.count("timeout", "llm", "primary")
    stats.count("breaker", "llm", "primary", OPEN)
    metrics = Metrics()
    metrics.watch(fallback=lambda: stats.counts)
    text = metrics.exposition().decode()
    assert 'rejoinder_provider_fallbacks_total{backend="primary",kind="llm",reason="timeout"} 1.0' \
        in text
    assert 'rejoinder_provider_timeouts_total{backend="primary",kind="llm"} 1.0' in text
    assert 'rejoinder_provider_breaker_transitions_total{backend="primary",kind="llm",' \
        'state="open"} 1.0' in text
