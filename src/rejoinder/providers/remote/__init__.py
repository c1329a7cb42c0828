"""Speech services reached over a small, generic HTTP protocol (any server may implement it;
:mod:`rejoinder.cloudsim` does).

    POST {base_url}/v1/stt                                           stt.py  RemoteSTT
        body: one utterance, raw PCM16 little-endian mono
        headers: Content-Type: application/octet-stream, X-Sample-Rate: 16000
        200 -> {"text": "the transcript"}

    GET {base_url}/v1/stt/stream  (WebSocket, one per utterance)     stt_stream.py
        query: sample_rate=16000 (the session's, for ``RemoteSTT(streaming=True)``)
        up:   binary messages of raw PCM16 little-endian mono, as the caller speaks;
              text {"type": "finalize"}: the transcript of everything sent so far, please
        down: {"type": "partial", "text": "the words so far"} while audio arrives;
              {"type": "final", "text": "..."} once per finalize, in their order;
              {"type": "error", "message": "..."} (the service then closes the socket)
        The socket stays open after a final (the caller may go on); the client closes it
        when the utterance is over.

    POST {base_url}/v1/tts                                           tts.py  RemoteTTS
        body: {"text": "one clause.", "sample_rate": 24000}
        200 -> raw PCM16 little-endian mono, streamed (chunked) as it is rendered,
               header X-Sample-Rate: the rate of the audio (must be the one asked for)

All send ``Authorization: Bearer <api_key>`` when a key is set, plus any extra headers given.
A status other than 200 becomes :class:`ProviderError` (with the start of the body; a
refused stream upgrade: only its status), or :class:`ProviderUnavailable` for 429, 502,
503 and 504; a service that cannot be reached becomes :class:`ProviderUnavailable`, a
connection that breaks midway (a stream's socket closed before the utterance was over)
:class:`ProviderStreamError`, and an ``error`` message on the stream :class:`ProviderError`.
Time limits are the base classes' (the first result, and every gap in a stream, and a
stream's final transcript once asked for: ``stream_idle_timeout_s``). Error messages name
the URL: they are for the log; a caller is only told the error's code (``stt_unavailable``).
"""

from rejoinder.providers.remote.stt import RemoteSTT
from rejoinder.providers.remote.tts import RemoteTTS

__all__ = ["RemoteSTT", "RemoteTTS"]
