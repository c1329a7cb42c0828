"""Text to speech over HTTP: the text goes up as JSON, PCM16 streams back as it is rendered."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp
import numpy as np

from rejoinder.core.audio import PCM
from rejoinder.core.errors import ProviderError
from rejoinder.providers.base import TTS
from rejoinder.providers.remote._http import HTTPClient, connection_error, status_error

log = logging.getLogger(__name__)


class RemoteTTS(TTS):
    """``POST {base_url}/v1/tts`` (see :mod:`rejoinder.providers.remote`).

    Yields int16 chunks at ``sample_rate`` as they arrive; a sample split across two network
    chunks is carried over, so chunk boundaries never shift the samples.
    """

    name = "remote-tts"

    def __init__(self, base_url: str, *, sample_rate: int = 24_000, api_key: str = "",
                 headers: Mapping[str, str] | None = None, first_audio_timeout_s: float = 10.0,
                 path: str = "/v1/tts") -> None:
        self.url = base_url.rstrip("/") + path
        self.sample_rate = sample_rate
        self.first_item_timeout_s = first_audio_timeout_s
        self._http = HTTPClient(api_key, headers)

    async def _synthesize(self, text: str) -> AsyncIterator[PCM]:
        body = {"text": text, "sample_rate": self.sample_rate}
        try:
            async with self._http.session().post(self.url, json=body) as resp:
                if resp.status != 200:
                    raise await status_error(self.name, resp)
                rate = resp.headers.get("X-Sample-Rate")
                if rate is not None and rate != str(self.sample_rate):
                    raise ProviderError(self.name, f"the server sent {rate} Hz audio, "
                                                   f"not the {self.sample_rate} Hz asked for")
                carry = b""
                async for data in resp.content.iter_any():
                    if carry:
                        data = carry + data
                    whole = len(data) & ~1
                    carry = data[whole:]
                    if whole:
                        yield np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)
                if carry:
                    log.warning("%s: the audio stream ended mid-sample; dropped one byte",
                                self.name)
        except aiohttp.ClientError as exc:
            raise connection_error(self.name, self.url, exc) from exc

    async def warm(self) -> None:
        """Open the connection pool; a remote service keeps itself warm."""
        self._http.session()

    async def close(self) -> None:
        await self._http.close()
