"""What a signaling request must satisfy before it can start a call.

Each check raises :class:`SignalingError` with a short, stable message and a code for
the caller; what the parser or aiortc actually said goes only to the log.

- **Host** (every request): a server bound to a loopback address answers only to
  loopback names with its own port (``127.0.0.1:8080``, ``localhost:8080``,
  ``[::1]:8080``), so a web page whose name was rebound to 127.0.0.1 (DNS rebinding)
  cannot reach it. A server bound to any other address accepts any Host unless
  ``[server] allowed_hosts`` lists the names.
- **Origin** (requests that change state): absent (a program: ``rejoinder call``,
  curl) or the server's own origin, or listed in ``[server] allowed_origins``.
- **Content type**: ``application/json`` in UTF-8 (RFC 8259), so a cross-origin form
  or ``text/plain`` post, which needs no CORS preflight, cannot start a call.
- **Body**: a JSON object no larger than the limit, with a usable offer in it.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from rejoinder.core.errors import SignalingError
from rejoinder.core.netloc import DEFAULT_PORTS, is_loopback, split_host, split_origin

MAX_BODY_BYTES = 256 * 1024
# A call needs one audio section and the events channel; a few more leave room for
# clients that offer video too. Without BUNDLE each section gathers its own sockets.
MAX_MEDIA_SECTIONS = 4
# Every remote candidate is a destination the server sends ICE checks to.
MAX_CANDIDATES = 128

_OFFER_SHAPE = '{"sdp": "...", "type": "offer"}'


# -- Host ------------------------------------------------------------------------------
def check_host(request: web.Request, bound_host: str, allowed: Sequence[str]) -> None:
    """Refuse a request whose Host header this server does not answer to."""
    header = request.headers.get("Host")
    parsed = split_host(header) if header is not None else None
    if "*" in allowed:
        ok = True
    elif allowed:
        ok = parsed is not None and any(
            (want := split_host(entry)) is not None and want[0] == parsed[0]
            and want[1] in (None, parsed[1]) for entry in allowed)
    elif is_loopback(bound_host):
        ok = parsed is not None and is_loopback(parsed[0]) \
            and parsed[1] == _local_port(request)
    else:
        ok = True  # bound to all (or a public) address and nothing configured
    if not ok:
        raise SignalingError("forbidden_host", "this server does not answer to that Host name",
                             status=403, detail=f"Host {str(header)[:100]!r}")


def _local_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return None


# -- Origin ----------------------------------------------------------------------------
def check_origin(request: web.Request, allowed: Sequence[str]) -> None:
    """Refuse a state-changing request from a web page of another origin.

    A request without Origin comes from a program, not a page, and is allowed. The
    server's own origin is the request's Host; its scheme is not compared, because
    behind a TLS-terminating proxy the server sees http where the page says https.
    """
    origin = request.headers.get("Origin")
    if origin is None or "*" in allowed:
        return
    parsed = split_origin(origin)
    if parsed is not None:
        scheme, name, port = parsed
        host = split_host(request.headers.get("Host", ""))
        if host is not None and host[0] == name \
                and (host[1] if host[1] is not None else DEFAULT_PORTS[scheme]) == port:
            return
        if any(split_origin(entry) == parsed for entry in allowed):
            return
    elif origin.strip() in allowed:  # e.g. "null", only when listed
        return
    raise SignalingError("forbidden_origin",
                         "requests from this web page's origin are not allowed", status=403,
                         detail=f"Origin {origin[:100]!r}")


# -- Body ------------------------------------------------------------------------------
def check_content_type(request: web.Request) -> None:
    """Only ``application/json`` in UTF-8 (no charset, or a name of UTF-8)."""
    if request.content_type != "application/json":
        raise SignalingError("unsupported_media_type",
                             "the body must be application/json", status=415,
                             detail=f"Content-Type {request.headers.get('Content-Type')!r}")
    charset = request.charset
    if charset is None:
        return
    try:
        utf8 = codecs.lookup(charset).name == "utf-8"
    except LookupError:
        utf8 = False
    if not utf8:
        raise SignalingError("unsupported_media_type",
                             "the body must be application/json in UTF-8", status=415,
                             detail=f"charset {charset[:40]!r}")


async def read_json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise SignalingError("too_large", f"the body is larger than {MAX_BODY_BYTES} bytes",
                             status=413) from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # RecursionError: nesting deeper than the interpreter's recursion limit.
        raise SignalingError("bad_json", f"the body must be JSON: {_OFFER_SHAPE}",
                             detail=f"{type(exc).__name__}: {str(exc)[:200]}") from None


def parse_offer(body: Any) -> str:
    """The SDP of a ``{"sdp", "type": "offer"}`` body, checked for what a call needs
    before aiortc sees it."""
    if not isinstance(body, dict):
        raise SignalingError("bad_json", f"the body must be a JSON object: {_OFFER_SHAPE}",
                             detail=f"a JSON {type(body).__name__}")
    if body.get("type") != "offer":
        raise SignalingError("bad_field", '"type" must be "offer"')
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise SignalingError("bad_field", '"sdp" must be a non-empty string')
    if not sdp.lstrip().startswith("v=0"):
        raise SignalingError("bad_field", '"sdp" must be an SDP session description (v=0 ...)')
    lines = sdp.splitlines()
    sections = sum(1 for line in lines if line.startswith("m="))
    if sections > MAX_MEDIA_SECTIONS:
        raise SignalingError("bad_offer",
                             f"the offer has more than {MAX_MEDIA_SECTIONS} media sections",
                             detail=f"{sections} media sections")
    candidates = [line for line in lines if line.startswith("a=candidate:")]
    if len(candidates) > MAX_CANDIDATES:
        raise SignalingError("bad_offer",
                             f"the offer has more than {MAX_CANDIDATES} ICE candidates",
                             detail=f"{len(candidates)} candidates")
    if not any(_is_udp(line) for line in candidates):
        # The answer is the only message (no trickle ICE): an offer without a UDP
        # candidate can never connect, so it must not hold a call slot.
        raise SignalingError(
            "no_candidates",
            "the offer has no ICE candidates; gather them before sending the offer"
            " (trickle ICE is not supported)",
            detail=f"{len(candidates)} candidates, none UDP")
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise SignalingError("bad_offer", "the offer has no DTLS fingerprint")
    # aiortc bundles every section onto the first one the BUNDLE group names: a name the
    # offer has no section for leaves a transport of None that fails once the caller
    # connects (in aiortc's own task, so the call only times out).
    mids = {line[len("a=mid:"):].strip() for line in lines if line.startswith("a=mid:")}
    for line in lines:
        if line.startswith("a=group:BUNDLE") and not set(line.split()[1:]) <= mids:
            raise SignalingError("bad_offer", "the offer's BUNDLE group names a media "
                                 "section it does not have", detail=line[:100])
    return sdp


def _is_udp(candidate_line: str) -> bool:
    fields = candidate_line.split()
    return len(fields) > 2 and fields[2].lower() == "udp"
