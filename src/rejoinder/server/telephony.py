"""Phone calls through Twilio: the voice webhook and the media stream.

    POST /twilio/voice   Twilio's webhook when the number is called (form-encoded): answers
                         TwiML <Connect><Stream url="wss://PUBLIC/twilio/media"> with the
                         call's one-time token and From/To/CallSid as <Parameter>s
    GET  /twilio/media   the WebSocket of that stream (rejoinder.transports.twilio)

Both are signed by Twilio (``X-Twilio-Signature``, checked with the ``twilio`` library's
``RequestValidator``: the webhook over ``public_url`` + path and its form, the upgrade over
the stream's URL alone); a missing or wrong signature is a 403 and no call. The stream must
also present the token the TwiML issued (single use, ``stream_token_ttl_s``), so a signed
upgrade cannot be replayed into a second call. Without an auth token the routes answer 404
``telephony_off``, unless ``allow_unsigned`` (local testing: nothing is checked but the
token). Phone calls take a slot of ``max_calls`` like any call.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from rejoinder.config import TelephonyOptions
from rejoinder.core.clock import Clock
from rejoinder.core.errors import OverloadedError, SignalingError
from rejoinder.observability.logs import call_id_var
from rejoinder.server.call import Call
from rejoinder.transports.twilio import StreamStart, TwilioTransport

if TYPE_CHECKING:
    from rejoinder.server.app import Server

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"
SIGNATURE_HEADER = "X-Twilio-Signature"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_MESSAGE_BYTES = 64 * 1024  # a media message is ~400 bytes; a start, a few KiB
_PASSED_ON = ("CallSid", "From", "To")  # webhook fields the stream is given as parameters
_TOKENS_MAX = 10_000  # tokens issued and not yet used; beyond, the oldest are dropped


def log_state(options: TelephonyOptions) -> None:
    """The one line the server logs at start about phone calls."""
    if options.twilio_auth_token:
        log.info("phone calls (Twilio) on: webhook %s%s", options.public_url.rstrip("/"),
                 VOICE_PATH)
    elif options.allow_unsigned:
        log.warning("phone calls (Twilio) on WITHOUT signatures (telephony.allow_unsigned):"
                    " for local testing only; anyone who reaches the server can call")
    else:
        log.info("phone calls (Twilio) off: set telephony.twilio_auth_token and"
                 " telephony.public_url to take them")


class PhoneLine:
    """The two routes, the tokens they share, and the calls they start on ``server``."""

    def __init__(self, server: Server, clock: Clock | None = None) -> None:
        self.server = server
        self.options = server.config.telephony
        self.clock = clock or Clock()
        token = self.options.twilio_auth_token
        self._validator = RequestValidator(token) if token else None
        self._tokens: dict[str, tuple[float, str]] = {}  # token -> (expires at, CallSid)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(VOICE_PATH, self.voice)
        app.router.add_get(MEDIA_PATH, self.media)

    # -- the webhook -----------------------------------------------------------------------
    async def voice(self, request: web.Request) -> web.Response:
        self._check_on()
        if request.content_type != FORM_TYPE:  # Twilio posts a form, never JSON
            raise SignalingError("unsupported_media_type", f"the body must be {FORM_TYPE}",
                                 status=415,
                                 detail=f"Content-Type {request.headers.get('Content-Type')!r}")
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise SignalingError("too_large", "the body is too large", status=413) from None
        except (ValueError, LookupError) as exc:  # undecodable, or an unknown charset
            raise SignalingError("bad_form", "the body is not a readable form",
                                 detail=type(exc).__name__) from None
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        self._check_signature(request, self._public(request, VOICE_PATH), params)
        response = VoiceResponse()
        server = self.server
        if len(server.calls) >= server.config.server.max_calls:
            log.warning("phone call refused: at capacity (%d calls)", len(server.calls))
            response.reject(reason="busy")
            return _twiml(response)
        token = self._issue(params.get("CallSid", ""))
        stream = Stream(url=self._stream_url(request))
        stream.parameter(name="token", value=token)
        for name in _PASSED_ON:
            if params.get(name):
                stream.parameter(name=name, value=params[name][:64])
        connect = Connect()
        connect.append(stream)
        response.append(connect)
        log.info("phone call answered with a media stream")
        return _twiml(response)

    # -- the stream ------------------------------------------------------------------------
    async def media(self, request: web.Request) -> web.StreamResponse:
        self._check_on()
        self._check_signature(request, self._stream_url(request), {})
        server = self.server
        limit = server.config.server.max_calls
        if len(server.calls) >= limit:
            raise OverloadedError(
                "at_capacity",
                f"server is at capacity ({limit} concurrent calls); try again later")
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
        if not ws.can_prepare(request).ok:
            raise SignalingError("bad_request", "this path takes a WebSocket")
        call: Call | None = None
        transport = TwilioTransport(ws, lambda start: self._accept(call, start))
        call = Call(server.config, server.stack, server._forget, transport=transport)
        call_id_var.set(call.id)
        server.calls[call.id] = call
        call.observers.extend(server.observability.attach(call.id, call.conversation.stats))
        await ws.prepare(request)
        log.info("media stream connected")
        call.watch()  # a start within connect_timeout_s, then media every media_timeout_s
        try:
            await transport.serve()
        finally:
            await call.close()
        return ws

    def _accept(self, call: Call | None, start: StreamStart) -> bool:
        """The stream's ``start``: its token must be one this server issued, unused and
        unexpired, for this CallSid. Then the call is recorded."""
        token = start.parameters.get("token", "")
        issued = self._tokens.pop(token, None)
        if issued is None or issued[0] < self.clock.now():
            log.warning("media stream refused: %s one-time token",
                        "an expired" if issued else "no valid")
            return False
        if issued[1] and issued[1] != start.call_sid:
            log.warning("media stream refused: its token was issued to another call")
            return False
        server = self.server
        if call is not None and server.recorder is not None:
            record = server.recorder.call(call.id, transport="twilio",
                                          agent=server.config.agent.name,
                                          twilio_call_sid=start.call_sid)
            server.call_logs[call.id] = record
            call.observers.append(record.on_event)
            call.conversation.records.append(record.on_event)  # tool arguments
            record.begin()
        return True

    # -- checks ----------------------------------------------------------------------------
    def _check_on(self) -> None:
        if not self.options.enabled:
            raise SignalingError("telephony_off", "phone calls are not configured on this "
                                 "server", status=404)

    def _check_signature(self, request: web.Request, url: str,
                         params: dict[str, str]) -> None:
        if self._validator is None:
            return  # allow_unsigned
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not signature or not self._validator.validate(url, params, signature):
            raise SignalingError("bad_signature", "the request is not signed by Twilio",
                                 status=403,
                                 detail="no signature" if not signature else "wrong signature")

    def _issue(self, call_sid: str) -> str:
        now = self.clock.now()
        for token in [t for t, (expires, _) in self._tokens.items() if expires < now]:
            del self._tokens[token]
        while len(self._tokens) >= _TOKENS_MAX:
            del self._tokens[next(iter(self._tokens))]
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (now + self.options.stream_token_ttl_s, call_sid[:64])
        return token

    def _public(self, request: web.Request, path: str) -> str:
        """The URL Twilio requested: ``public_url`` + path; without one (allow_unsigned,
        local testing) the request's own scheme and Host."""
        base = self.options.public_url or f"{request.scheme}://{request.host}"
        return base.rstrip("/") + path

    def _stream_url(self, request: web.Request) -> str:
        url = self._public(request, MEDIA_PATH)
        return "wss://" + url[len("https://"):] if url.startswith("https://") \
            else "ws://" + url[len("http://"):]

    def called_by_public_name(self, request: web.Request) -> bool:
        """A phone route requested by ``public_url``'s host: Twilio calls the server by
        that name (through a proxy or tunnel), so it is answered whatever the bound
        address; the signatures guard these routes."""
        if not self.options.public_url or not request.path.startswith("/twilio/"):
            return False
        host = request.headers.get("Host", "").lower()
        return host == urlsplit(self.options.public_url).netloc.lower()


def _twiml(response: VoiceResponse) -> web.Response:
    return web.Response(text=str(response.to_xml()), content_type="text/xml")

