"""The operator's side of the server: access control, the dashboard and its JSON API.

    register(app, server)   adds the routes below and the access middleware

    GET  /dashboard                   the dashboard (a login form, 401, without a session)
    GET  /dashboard/{asset}           its script, style and the vendored uPlot
    POST /dashboard/login             form field ``token``: a session cookie, 303 to /dashboard
    POST /dashboard/logout
    GET  /api/calls?from=&to=&outcome=&transport=&agent=&limit=&offset=   newest first
    GET  /api/review?from=&to=        the weekly review (``rejoinder.store.review``)
    GET  /api/stats/latency?from=&to=&bucket=hour|day&agent=&transport=
    OPTIONS /api/offer                CORS preflight, for ``allowed_origins`` only

**Operator endpoints** (the above, ``/api/calls/{id}`` GET and DELETE, ``/metrics``) need
``[server] admin_token`` as ``Authorization: Bearer <token>`` or the dashboard's session
cookie (HttpOnly, SameSite=Strict, a random id kept by the server). Without a token
configured they answer loopback clients only (127.0.0.1, ::1). Tokens are compared in
constant time and never logged.

**Calls** (the page ``/`` and ``POST /api/offer``) are open unless ``[server] call_key``
is set; then they need, in the ``X-Rejoinder-Call-Token`` header or the ``call_token``
query parameter, the key itself (a program or a back end) or a call token
``<exp>.<signature>``: ``exp`` the Unix time it expires, ``signature`` the hex
HMAC-SHA256 of ``exp`` (as written) under the key, valid for at most a day
(:func:`mint_call_token`), so a site that embeds the call page mints one per visitor.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, cast

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from rejoinder.core.errors import SignalingError
from rejoinder.core.netloc import is_loopback, split_origin
from rejoinder.store.db import Store
from rejoinder.store.queries import (
    OUTCOMES,
    CallFilter,
    distinct_values,
    list_calls,
    tool_statuses,
    turn_stats,
)
from rejoinder.store.review import Bucket, latency, review

if TYPE_CHECKING:
    from rejoinder.server.app import Server

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_WEB = resources.files("rejoinder") / "web"
SESSION_COOKIE = "rejoinder_session"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 1000
CALL_TOKEN_HEADER = "X-Rejoinder-Call-Token"
CALL_TOKEN_MAX_S = 86_400  # a call token further in the future than this is refused
MAX_PAGE = 500
# The routes that need the operator token (aiohttp's canonical form of each resource).
OPERATOR_RESOURCES = frozenset({
    "/dashboard", "/dashboard/login", "/dashboard/logout", "/dashboard/{asset}",
    "/api/calls", "/api/calls/{call_id}", "/api/review", "/api/stats/latency", "/metrics"})
# Reachable without a session: the form posts the token here.
_OPEN = frozenset({"/dashboard/login"})
_ASSETS = {
    "dashboard.js": ("dashboard.js", "application/javascript"),
    "dashboard.css": ("dashboard.css", "text/css"),
    "uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "application/javascript"),
    "uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css"),
    "uPlot.LICENSE": ("vendor/uplot/LICENSE", "text/plain"),
}
# The dashboard is never framed by another page (clickjacking) and runs only its own code.
_PAGE_HEADERS = {
    "X-Frame-Options": "DENY", "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'",
}


# -- secrets -----------------------------------------------------------------------------
def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison (of the UTF-8 bytes, so any text is compared safely)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8"))


def mint_call_token(key: str, ttl_s: float, now: float | None = None) -> str:
    """A call token valid for ``ttl_s`` seconds: what an embedding site's back end makes
    (the same three lines in any language: exp, then its HMAC-SHA256 under the key)."""
    exp = str(int((time.time() if now is None else now) + ttl_s))
    return f"{exp}.{_sign(key, exp)}"


def _sign(key: str, exp: str) -> str:
    return hmac.new(key.encode("utf-8"), exp.encode("ascii"), hashlib.sha256).hexdigest()


def check_call_token(value: str, key: str, now: float) -> str | None:
    """None when ``value`` is the key or a valid call token; else why not."""
    if same_secret(value, key):
        return None
    exp, dot, signature = value.partition(".")
    if not dot or not (exp.isascii() and exp.isdigit()) or len(exp) > 12:  # not "²"
        return "malformed"
    if not same_secret(signature, _sign(key, exp)):
        return "bad signature"
    if int(exp) <= now:
        return "expired"
    if int(exp) > now + CALL_TOKEN_MAX_S:
        return "valid for too long"
    return None


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _loopback_peer(request: web.Request) -> bool:
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class Sessions:
    """The dashboard's sessions: random ids kept here, each valid for ``ttl_s``."""

    def __init__(self, ttl_s: float = SESSION_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def create(self) -> str:
        sid = secrets.token_urlsafe(32)
        self._expiry[sid] = self.clock() + self.ttl_s
        while len(self._expiry) > MAX_SESSIONS:
            self._expiry.popitem(last=False)
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        # A dict lookup by the id itself: the ids are 256 random bits, so the time it
        # takes tells nothing useful.
        expiry = self._expiry.get(sid)
        if expiry is None:
            return False
        if expiry <= self.clock():
            del self._expiry[sid]
            return False
        return True

    def drop(self, sid: str | None) -> None:
        if sid:
            self._expiry.pop(sid, None)


# -- the middleware and routes -------------------------------------------------------------
class Operator:
    """Access rules and operator handlers for one :class:`Server`."""

    def __init__(self, server: Server, *, wall: Callable[[], float] = time.time) -> None:
        self.server = server
        self.options = server.config.server
        self.sessions = Sessions()
        self.wall = wall

    def register(self, app: web.Application) -> None:
        app.middlewares.append(self.middleware)
        app.on_response_prepare.append(self._cors)
        app.router.add_get("/dashboard", self.dashboard)
        app.router.add_get("/dashboard/{asset}", self.asset)
        app.router.add_post("/dashboard/login", self.login)
        app.router.add_post("/dashboard/logout", self.logout)
        app.router.add_get("/api/calls", self.calls)
        app.router.add_get("/api/review", self.review)
        app.router.add_get("/api/stats/latency", self.latency)
        app.router.add_route("OPTIONS", "/api/offer", self.preflight)
        if not self.options.admin_token and not is_loopback(self.options.host):
            log.warning(
                "no [server] admin_token is set and the server listens on %s: the dashboard,"
                " the call records API and /metrics answer only clients on this host; set "
                "REJOINDER_SERVER__ADMIN_TOKEN to reach them from elsewhere (and behind a "
                "reverse proxy on this host, which makes every client look local)",
                self.options.host)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        if canonical in OPERATOR_RESOURCES and canonical not in _OPEN:
            refusal = self._operator_refusal(request, canonical)
            if refusal is not None:
                return refusal
        elif self.options.call_key and canonical in ("/", "/api/offer") \
                and request.method != "OPTIONS":
            refusal = self._call_refusal(request)
            if refusal is not None:
                return refusal
        return await handler(request)

    def _operator_refusal(self, request: web.Request, canonical: str) -> web.Response | None:
        token = self.options.admin_token
        if not token:
            if _loopback_peer(request):
                return None
            log.info("%s %s refused (forbidden_remote)", request.method, request.path)
            return _error(403, "forbidden_remote",
                          "the operator endpoints answer only this host unless "
                          "[server] admin_token is set")
        given = _bearer(request)
        if given is not None:
            if same_secret(given, token):
                return None
            message = "the token is not right"
        elif self.sessions.valid(request.cookies.get(SESSION_COOKIE)):
            return None
        else:
            message = "this needs the operator token: Authorization: Bearer <token>"
        log.info("%s %s refused (unauthorized)", request.method, request.path)
        if canonical == "/dashboard" and request.method in ("GET", "HEAD"):
            return self._login_page(401, "" if given is None else message)
        return _error(401, "unauthorized", message,
                      {"WWW-Authenticate": 'Bearer realm="rejoinder"'})

    def _call_refusal(self, request: web.Request) -> web.Response | None:
        value = request.headers.get(CALL_TOKEN_HEADER) or request.query.get("call_token")
        why = "missing" if not value else \
            check_call_token(value, self.options.call_key, self.wall())
        if why is None:
            return None
        log.info("%s %s refused (call token %s)", request.method, request.path, why)
        return _error(401, "call_token_required" if why == "missing" else "bad_call_token",
                      "this server needs a call token" if why == "missing"
                      else f"the call token is not valid ({why})")

    async def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        """A page of an allowed origin may read the answer to its offer, a refusal too
        (the guard refuses other origins' POSTs)."""
        origin = request.headers.get("Origin")
        if request.method == "POST" and request.path == "/api/offer" \
                and origin is not None and self._allowed_origin(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    def _allowed_origin(self, origin: str) -> bool:
        allowed = self.options.allowed_origins
        parsed = split_origin(origin)
        if parsed is None:
            return origin.strip() in allowed  # e.g. "null", only when listed
        return "*" in allowed or any(split_origin(entry) == parsed for entry in allowed)

    async def preflight(self, request: web.Request) -> web.Response:
        """CORS preflight of ``POST /api/offer``, granted only to ``allowed_origins``."""
        origin = request.headers.get("Origin")
        if origin is None or not self._allowed_origin(origin):
            log.info("OPTIONS /api/offer refused (forbidden_origin)")
            return _error(403, "forbidden_origin",
                          "requests from this web page's origin are not allowed")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": f"Content-Type, {CALL_TOKEN_HEADER}",
            "Access-Control-Max-Age": "600"})

    # -- the dashboard ----------------------------------------------------------------------
    async def dashboard(self, request: web.Request) -> web.Response:
        return web.Response(text=(_WEB / "dashboard.html").read_text(),
                            content_type="text/html", headers=_PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        entry = _ASSETS.get(request.match_info["asset"])
        if entry is None:
            return _error(404, "not_found", "no such file")
        path, content_type = entry
        return web.Response(body=(_WEB / path).read_bytes(), content_type=content_type,
                            headers={"Cache-Control": "no-cache"})

    def _login_page(self, status: int, message: str) -> web.Response:
        html = (_WEB / "login.html").read_text().replace(
            "<!--message-->", _escape(message))
        return web.Response(text=html, status=status, content_type="text/html",
                            headers=_PAGE_HEADERS)

    async def login(self, request: web.Request) -> web.Response:
        token = self.options.admin_token
        try:
            form = await request.post()
        except (ValueError, LookupError) as exc:  # no multipart boundary, a bad charset
            raise SignalingError("bad_form", "the body must be a form with the field token",
                                 detail=type(exc).__name__) from None
        given = form.get("token")
        if not token or not isinstance(given, str) or not same_secret(given.strip(), token):
            log.info("POST /dashboard/login refused (unauthorized)")
            return self._login_page(401, "That is not the token." if token else
                                    "No [server] admin_token is set: open the dashboard "
                                    "from this host, no login needed.")
        response = web.Response(status=303, headers={"Location": "/dashboard"})
        response.set_cookie(SESSION_COOKIE, self.sessions.create(), httponly=True,
                            samesite="Strict", path="/", max_age=int(self.sessions.ttl_s),
                            secure=request.secure)
        log.info("dashboard session started")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = web.Response(status=303, headers={"Location": "/dashboard"})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    # -- the JSON API ---------------------------------------------------------------------
    async def calls(self, request: web.Request) -> web.Response:
        where = self._filter(request, default_days=None)
        outcome = request.query.get("outcome") or None
        if outcome is not None and outcome not in OUTCOMES:
            return _error(400, "bad_field", f"outcome must be one of {', '.join(OUTCOMES)}")
        where = CallFilter(where.start, where.end, outcome, where.transport, where.agent)
        limit = _int(request, "limit", 50, 1, MAX_PAGE)
        offset = _int(request, "offset", 0, 0, 10**9)
        store = self._store()
        try:
            page = await list_calls(store, where, limit=limit, offset=offset)
        except (SQLAlchemyError, OSError) as exc:
            return _unavailable(exc)
        for call in cast(list[dict[str, object]], page["calls"]):
            call["active"] = call["call_id"] in self.server.calls
        return web.json_response({**page, **_range_json(where)})

    async def review(self, request: web.Request) -> web.Response:
        where = self._filter(request, default_days=self.server.config.review.days)
        store = self._store()
        try:
            turns = await turn_stats(store, where)
            tools = await tool_statuses(store, where)
        except (SQLAlchemyError, OSError) as exc:
            return _unavailable(exc)
        prompt = getattr(self.server.stack.llm, "prompt_cache_stats", None)
        checks = review(turns, tools, self.server.config.review,
                        prompt() if callable(prompt) else None)
        return web.json_response({**_range_json(where), "turns": len(turns),
                                  "calls": len({t.call_id for t in turns}), "checks": checks})

    async def latency(self, request: web.Request) -> web.Response:
        where = self._filter(request, default_days=self.server.config.review.days)
        bucket = request.query.get("bucket", "hour")
        if bucket not in ("hour", "day"):
            return _error(400, "bad_field", "bucket must be hour or day")
        store = self._store()
        try:
            turns = await turn_stats(store, where)
            choices = await distinct_values(store, CallFilter(where.start, where.end))
        except (SQLAlchemyError, OSError) as exc:
            return _unavailable(exc)
        return web.json_response({**_range_json(where), **choices,
                                  **latency(turns, cast(Bucket, bucket))})

    def _store(self) -> Store:
        if self.server.recorder is None:
            raise SignalingError("store_unavailable", "this server keeps no call records",
                                 status=503)
        return self.server.recorder.store

    def _filter(self, request: web.Request, default_days: float | None) -> CallFilter:
        q = request.query
        start = _when(q.get("from"), "from", end=False)
        end = _when(q.get("to"), "to", end=True)
        if default_days is not None and start is None:
            try:
                start = (end or datetime.fromtimestamp(self.wall(), UTC)) \
                    - timedelta(days=default_days)
            except OverflowError:  # "to" within default_days of year 1
                start = datetime.min.replace(tzinfo=UTC)
        return CallFilter(start=start, end=end, transport=q.get("transport") or None,
                          agent=q.get("agent") or None)


def register(app: web.Application, server: Server) -> Operator:
    """Add the operator's routes and the access middleware to ``server``'s app."""
    operator = Operator(server)
    operator.register(app)
    return operator


# -- helpers ------------------------------------------------------------------------------
def _when(value: str | None, name: str, *, end: bool) -> datetime | None:
    """An ISO date or date-time (UTC unless it says otherwise). A date alone as ``to``
    means the end of that day: ``to=2026-12-06`` includes the 6th."""
    if not value:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            at = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return at + timedelta(days=1) if end else at
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: past year 9999 or before year 1
        raise SignalingError("bad_field", f"{name} must be an ISO date or time") from None


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SignalingError("bad_field", f"{name} must be a whole number") from None
    return max(low, min(high, value))


def _range_json(where: CallFilter) -> dict[str, object]:
    return {"from": where.start.isoformat() if where.start else None,
            "to": where.end.isoformat() if where.end else None}


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status, headers=headers)


def _unavailable(exc: BaseException) -> web.Response:
    log.warning("call store unavailable: %s", type(exc).__name__)
    return _error(503, "store_unavailable", "the call store is unavailable")
