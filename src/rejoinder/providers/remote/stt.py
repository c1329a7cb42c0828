"""Speech to text over HTTP: the utterance goes up as raw PCM16, the transcript comes back;
or, with ``streaming``, the audio goes up a WebSocket as it is spoken (:mod:`.stt_stream`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp
import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE
from rejoinder.core.errors import ProviderError
from rejoinder.providers.base import STT, STTStream
from rejoinder.providers.remote._http import HTTPClient, connection_error, status_error
from rejoinder.providers.remote.stt_stream import RemoteSTTStream

log = logging.getLogger(__name__)


class RemoteSTT(STT):
    """``POST {base_url}/v1/stt`` (see :mod:`rejoinder.providers.remote`).

    ``streaming``: the caller's sessions (:meth:`stream`) send the audio as it comes over
    ``GET {base_url}/v1/stt/stream`` and have the service's interim words as ``partial()``;
    without it a session sends the whole utterance when the turn asks for its transcript.
    ``transcribe`` (a whole recording: a fallback's, the warm-up) always posts.
    ``headers`` are sent with every request, e.g. ``{"X-Transcript": "..."}`` for a simulator.
    """

    name = "remote-stt"

    def __init__(self, base_url: str, *, api_key: str = "",
                 headers: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                 path: str = "/v1/stt", streaming: bool = False,
                 stream_path: str = "/v1/stt/stream") -> None:
        self.url = base_url.rstrip("/") + path
        self.stream_url = base_url.rstrip("/") + stream_path
        self.streaming = streaming
        self.timeout_s = timeout_s
        self._http = HTTPClient(api_key, headers)

    def stream(self) -> STTStream:
        if self.streaming:
            return RemoteSTTStream(self.name, self.stream_url, self._http)
        return super().stream()

    async def _transcribe(self, audio: PCM) -> str:
        body = np.ascontiguousarray(audio, dtype="<i2").tobytes()
        headers = {"Content-Type": "application/octet-stream", "X-Sample-Rate": str(SAMPLE_RATE)}
        try:
            async with self._http.session().post(self.url, data=body, headers=headers) as resp:
                if resp.status != 200:
                    raise await status_error(self.name, resp)
                try:
                    payload = await resp.json(content_type=None)
                except ValueError:
                    raise ProviderError(self.name, "the response is not JSON") from None
        except aiohttp.ClientError as exc:
            raise connection_error(self.name, self.url, exc) from exc
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str):
            raise ProviderError(self.name, 'the response has no "text" string')
        return text

    async def warm(self) -> None:
        """Open the connection pool; a remote service keeps itself warm."""
        self._http.session()

    async def close(self) -> None:
        await self._http.close()
