"""Audio end-of-turn model: smart-turn v3.2 (ONNX, BSD-2-Clause, by Daily).

Given the caller's audio of the current turn up to now, including the silence since they
stopped, it returns P(the turn is complete). It hears intonation and unfinished phrases
("I'd like to, um..."), which a silence timer cannot.

The weights ship in the ``pipecat-ai`` wheel at
``pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx`` (8.7 MB). Install it without
its dependencies (this module imports nothing from it; it only reads the file)::

    pip install --no-deps 'pipecat-ai==1.14.0'

Input features, as the model was trained (Whisper's feature extractor with an 8 s window):
the last 8 s of 16 kHz audio, zero-padded *at the start* when shorter; the whole 8 s buffer
normalised to zero mean and unit variance; then Whisper's log-mel spectrogram (80 Slaney mel
bins, 25 ms periodic Hann window, 10 ms hop, centred with reflection, power, log10 floored at
1e-10 and at max - 8, then (x + 4) / 4), the last frame dropped: shape (1, 80, 800).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from rejoinder.core.audio import PCM, SAMPLE_RATE
from rejoinder.core.errors import ConfigError, MissingExtraError, RejoinderError
from rejoinder.providers.base import TurnModel
from rejoinder.providers.local import package_file

log = logging.getLogger(__name__)

MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
MODEL_DIST = "pipecat-ai==1.14.0"
INSTALL_HINT = f"pip install --no-deps '{MODEL_DIST}'"
WINDOW_S = 8  # the model hears the last 8 s

_N_FFT = 400
_HOP = 160
_N_MELS = 80
_SAMPLES = WINDOW_S * SAMPLE_RATE  # 128,000
_FRAMES = _SAMPLES // _HOP  # 800


class SmartTurnModelMissing(MissingExtraError):
    """The smart-turn weights are not installed; the message says how to install them."""

    def __init__(self, detail: str) -> None:
        RejoinderError.__init__(
            self,
            f"smart-turn model {MODEL_FILE} not found ({detail}); it ships in the pipecat-ai "
            f"wheel: install it with: {INSTALL_HINT}",
        )


@dataclass(frozen=True)
class SmartTurnOptions:
    model_path: Path | None = None  # None: the file inside the installed pipecat-ai package
    threads: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("turn.smart_turn.threads", "must be >= 1")


def find_model() -> Path:
    """Path of the bundled ONNX file, found without importing ``pipecat``."""
    try:
        return package_file(
            "pipecat", "audio", "turn", "smart_turn", "data", MODEL_FILE, dist="pipecat-ai")
    except MissingExtraError as exc:
        raise SmartTurnModelMissing("pipecat-ai is not installed") from exc
    except FileNotFoundError as exc:
        raise SmartTurnModelMissing(f"not in this pipecat-ai version: {exc}") from exc


class SmartTurn(TurnModel):
    """P(turn complete) for the audio so far; inference in one worker thread."""

    name = "smart-turn"

    def __init__(self, options: SmartTurnOptions | None = None) -> None:
        self.options = options or SmartTurnOptions()
        path = self.options.model_path or find_model()
        if not path.is_file():
            raise SmartTurnModelMissing(f"no file at {path}")
        try:
            ort: Any = importlib.import_module("onnxruntime")
        except ImportError as exc:
            raise MissingExtraError("onnxruntime", "local") from exc
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session: Any = ort.InferenceSession(
            str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self._input = str(self._session.get_inputs()[0].name)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")
        log.debug("loaded %s", path.name)

    async def _probability(self, audio: PCM) -> float:
        """P(complete) for the turn's audio so far (16 kHz int16, silence after speech included)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.predict, audio)

    def predict(self, audio: PCM) -> float:
        """Blocking form of :meth:`probability` (~70-200 ms on one core)."""
        t0 = time.perf_counter()
        batch = features(audio)[None]
        out = self._session.run(None, {self._input: batch})
        p = float(np.asarray(out[0]).reshape(-1)[0])
        log.debug("P(complete) %.2f in %.0f ms", p, 1000 * (time.perf_counter() - t0))
        return p

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def features(audio: PCM) -> np.ndarray:
    """The model's input for ``audio`` (16 kHz int16): float32 (80, 800)."""
    x = np.zeros(_SAMPLES, dtype=np.float32)
    tail = audio[-_SAMPLES:]
    if tail.size:
        x[_SAMPLES - tail.size:] = tail.astype(np.float32) / np.float32(32768.0)
    x = (x - x.mean()) / np.sqrt(x.var() + np.float32(1e-7))
    padded = np.pad(x, _N_FFT // 2, mode="reflect")
    frames = sliding_window_view(padded, _N_FFT)[::_HOP][:_FRAMES]  # the last frame dropped
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (800, 201)
    mel = np.log10(np.maximum(power @ _MEL_FILTERS, 1e-10))  # (800, 80)
    mel = np.maximum(mel, mel.max() - 8.0)
    out: np.ndarray = ((mel + 4.0) / 4.0).T.astype(np.float32)
    return np.ascontiguousarray(out)


def _mel_filters() -> np.ndarray:
    """Slaney-style mel filterbank, (201 FFT bins, 80 mels), area-normalised (as librosa)."""

    def to_mel(hz: np.ndarray) -> np.ndarray:
        mel = 3.0 * hz / 200.0
        log_region = hz >= 1000.0
        mel[log_region] = 15.0 + np.log(hz[log_region] / 1000.0) * 27.0 / np.log(6.4)
        return mel

    def to_hz(mel: np.ndarray) -> np.ndarray:
        hz = 200.0 * mel / 3.0
        log_region = mel >= 15.0
        hz[log_region] = 1000.0 * np.exp((mel[log_region] - 15.0) * np.log(6.4) / 27.0)
        return hz

    edges = to_hz(np.linspace(0.0, to_mel(np.array([SAMPLE_RATE / 2.0]))[0], _N_MELS + 2))
    bins = np.linspace(0.0, SAMPLE_RATE / 2.0, _N_FFT // 2 + 1)
    slopes = edges[None, :] - bins[:, None]  # (201, 82)
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (edges[2:] - edges[:-2])
    return filters


_WINDOW = np.hanning(_N_FFT + 1)[:-1]  # periodic Hann
_MEL_FILTERS = _mel_filters()
