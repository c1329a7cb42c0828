"""Speech services reached over a small, generic HTTP protocol (any server may implement it;
:mod:`rejoinder.cloudsim` does).

    POST {base_url}/v1/stt                                           stt.py  RemoteSTT
        body: one utterance, raw PCM16 little-endian mono
        headers: Content-Type: application/octet-stream, X-Sample-Rate: 16000
        200 -> {"text": "the transcript"}

    POST {base_url}/v1/tts                                           tts.py  RemoteTTS
        body: {"text": "one clause.", "sample_rate": 24000}
        200 -> raw PCM16 little-endian mono, streamed (chunked) as it is rendered,
               header X-Sample-Rate: the rate of the audio (must be the one asked for)

Both send ``Authorization: Bearer <api_key>`` when a key is set, plus any extra headers given.
A status other than 200 becomes :class:`ProviderError` (with the start of the body), or
:class:`ProviderUnavailable` for 429, 502, 503 and 504; a service that cannot be reached
becomes :class:`ProviderUnavailable`, a connection that breaks midway
:class:`ProviderStreamError`. Time limits are the base classes' (the first result, and
every gap in a stream: ``stream_idle_timeout_s``). Error messages name the URL: they are
for the log; a caller is only told the error's code (``stt_unavailable``).
"""

from rejoinder.providers.remote.stt import RemoteSTT
from rejoinder.providers.remote.tts import RemoteTTS

__all__ = ["RemoteSTT", "RemoteTTS"]
