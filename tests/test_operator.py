"""Access control of the operator endpoints and of calls, against the real aiohttp app:
the admin token (bearer and the dashboard's session cookie), the loopback rule without a
token, the call key and call tokens, CORS preflight, unguessable call ids."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rejoinder.config import Config, ServerOptions, load_config
from rejoinder.core.errors import ConfigError
from rejoinder.server.app import Server
from rejoinder.server.call import Call
from rejoinder.server.operator import (
    CALL_TOKEN_HEADER,
    SESSION_COOKIE,
    Sessions,
    check_call_token,
    mint_call_token,
    register,
)
from rejoinder.store import Recorder, Store
from rejoinder.testing import fake_stack

TOKEN = "s3cret-operator-token-0123456789"
KEY = "call-key-of-this-deployment-0123456789"
Client = TestClient  # type: ignore[type-arg]


def _remote(address: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware (placed first) that makes every request come from ``address``."""
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request.clone(remote=address))  # type: ignore[no-any-return]
    return middleware


async def _start(tmp_path: Any, options: ServerOptions, remote: str | None = None
                 ) -> tuple[Client, Server, Recorder]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/calls.db")
    await store.migrate()
    recorder = Recorder(store, owns_store=True)
    recorder.start()
    server = Server(Config(server=options), fake_stack(), recorder)
    app = server.app()
    if remote is not None:
        app.middlewares.insert(0, _remote(remote))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client, server, recorder


@pytest.fixture
async def api(tmp_path) -> AsyncIterator[tuple[Client, Server]]:
    client, server, recorder = await _start(tmp_path, ServerOptions(admin_token=TOKEN))
    try:
        yield client, server
    finally:
        await client.close()
        await recorder.close()


def _record(server: Server, call_id: str) -> None:
    assert server.recorder is not None
    log = server.recorder.call(call_id, transport="webrtc", agent="Rejoinder")
    log.begin()
    for e in ({"type": "user", "turn": 1, "text": "hello"},
              {"type": "agent", "turn": 1, "text": "Hi."},
              {"type": "trace", "turn": 1, "outcome": "completed",
               "ms_after_speech_end": {"speech_end": 0.0, "first_audio_sent": 420.0}}):
        log.on_event(e)
    log.end("ended")


CALL = "0123456789abcdef0123456789abcdef"
ENDPOINTS = [("GET", "/api/calls"), ("GET", f"/api/calls/{CALL}"),
             ("DELETE", f"/api/calls/{CALL}"), ("GET", "/api/review"),
             ("GET", "/api/stats/latency"), ("GET", "/dashboard"),
             ("GET", "/dashboard/dashboard.js"), ("GET", "/dashboard/uPlot.iife.min.js"),
             ("GET", "/dashboard/uPlot.min.css"), ("GET", "/metrics")]


@pytest.mark.parametrize("method, path", ENDPOINTS)
async def test_every_operator_endpoint_needs_the_token(api, method: str, path: str,
                                                       caplog) -> None:
    client, server = api
    _record(server, CALL)
    with caplog.at_level(logging.DEBUG):
        resp = await client.request(method, path)
        assert resp.status == 401
        if path != "/dashboard":
            assert (await resp.json())["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        else:  # a person: the login form
            assert 'action="/dashboard/login"' in await resp.text()
        for wrong in ("Bearer wrong-token-0123456789", f"Bearer {TOKEN}x", f"Basic {TOKEN}",
                      f"Bearer {TOKEN[:-1]}", "Bearer"):
            resp = await client.request(method, path, headers={"Authorization": wrong})
            assert resp.status == 401, wrong
    assert TOKEN[:-1] not in caplog.text  # no token, right or wrong, is logged
    resp = await client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200, await resp.text()
    if path == "/dashboard":
        assert resp.headers["X-Frame-Options"] == "DENY"


async def test_the_call_endpoints_stay_open_with_a_token_set(api) -> None:
    client, _ = api
    assert (await client.get("/api/health")).status == 200
    assert (await client.get("/")).status == 200
    assert (await client.get("/app.js")).status == 200
    resp = await client.post("/api/offer", json={"type": "offer", "sdp": "x"})
    assert (resp.status, (await resp.json())["code"]) == (400, "bad_field")


async def test_the_api_answers_with_the_token(api) -> None:
    client, server = api
    _record(server, CALL)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert server.recorder is not None
    await server.recorder.flush()
    body = await (await client.get("/api/calls?outcome=ended", headers=auth)).json()
    assert [c["call_id"] for c in body["calls"]] == [CALL] and body["total"] == 1
    body = await (await client.get("/api/calls?outcome=failed", headers=auth)).json()
    assert body["calls"] == []
    body = await (await client.get("/api/review", headers=auth)).json()
    assert body["turns"] == 1
    checks = {c["key"]: c for c in body["checks"]}
    assert (checks["v2v_p95"]["value"], checks["v2v_p95"]["status"]) == (420.0, "pass")
    body = await (await client.get("/api/stats/latency?bucket=day", headers=auth)).json()
    assert body["overall"]["first_audio_sent"] == {"n": 1, "p50": 420.0, "p95": 420.0}
    assert body["agents"] == ["Rejoinder"] and body["transports"] == ["webrtc"]
    for bad in ("/api/calls?outcome=maybe", "/api/calls?from=yesterday",
                "/api/stats/latency?bucket=week", "/api/calls?limit=x"):
        resp = await client.get(bad, headers=auth)
        assert (resp.status, (await resp.json())["code"]) == (400, "bad_field"), bad
    resp = await client.get("/dashboard/nothing.js", headers=auth)
    assert resp.status == 404


async def test_the_dashboard_session_cookie(api) -> None:
    client, _ = api
    resp = await client.post("/dashboard/login", data={"token": "not-it-0123456789abcd"},
                             allow_redirects=False)
    assert resp.status == 401 and SESSION_COOKIE not in resp.cookies
    resp = await client.post("/dashboard/login", data={"token": TOKEN},
                             allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/dashboard")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie
    # The client keeps the cookie: the dashboard, its API and /metrics answer.
    for path in ("/dashboard", "/api/review", "/api/calls", "/metrics"):
        assert (await client.get(path)).status == 200, path
    # A made-up session id is refused.
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: "made-up"},
                                             response_url=client.make_url("/"))
    assert (await client.get("/api/calls")).status == 401
    resp = await client.post("/dashboard/login", data={"token": TOKEN},
                             allow_redirects=False)
    assert (await client.get("/api/calls")).status == 200
    resp = await client.post("/dashboard/logout", allow_redirects=False)
    assert resp.status == 303
    assert (await client.get("/api/calls")).status == 401


async def test_a_foreign_page_cannot_log_in(api) -> None:
    client, _ = api
    resp = await client.post("/dashboard/login", data={"token": TOKEN},
                             headers={"Origin": "https://evil.example"}, allow_redirects=False)
    assert resp.status == 403 and SESSION_COOKIE not in resp.cookies


def test_sessions_expire() -> None:
    now = [0.0]
    sessions = Sessions(ttl_s=60.0, clock=lambda: now[0])
    sid = sessions.create()
    assert len(sid) >= 40 and sessions.valid(sid)
    now[0] = 59.9
    assert sessions.valid(sid)
    now[0] = 60.0
    assert not sessions.valid(sid)
    assert not sessions.valid(None) and not sessions.valid("")


@pytest.mark.parametrize("method, path", ENDPOINTS)
async def test_without_a_token_only_loopback_clients_are_answered(
        tmp_path, method: str, path: str) -> None:
    for remote, expected in (("127.0.0.1", 200), ("::1", 200), ("::ffff:127.0.0.1", 200),
                             ("192.0.2.7", 403), ("2001:db8::7", 403), ("", 403)):
        client, server, recorder = await _start(tmp_path / remote.replace(":", "_"),
                                                ServerOptions(), remote)
        try:
            _record(server, CALL)
            resp = await client.request(method, path)
            assert resp.status == expected, (remote, await resp.text())
            if expected == 403:
                assert (await resp.json())["code"] == "forbidden_remote"
        finally:
            await client.close()
            await recorder.close()


async def test_a_remote_client_with_the_token_is_answered(tmp_path) -> None:
    client, _, recorder = await _start(tmp_path, ServerOptions(admin_token=TOKEN),
                                       "192.0.2.7")
    try:
        assert (await client.get("/metrics")).status == 401
        resp = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status == 200
    finally:
        await client.close()
        await recorder.close()


@pytest.mark.parametrize("host, token, warned", [
    ("0.0.0.0", "", True), ("192.0.2.1", "", True), ("0.0.0.0", TOKEN, False),
    ("127.0.0.1", "", False), ("::1", "", False)])
def test_a_reachable_server_without_a_token_warns_at_start(caplog, host, token, warned):
    server = Server(Config(server=ServerOptions(host=host, admin_token=token)), fake_stack())
    with caplog.at_level(logging.WARNING, logger="rejoinder.server.operator"):
        register(web.Application(), server)
    assert ("no [server] admin_token is set" in caplog.text) is warned


def test_the_secrets_are_checked_and_kept_out_of_the_repr() -> None:
    config = load_config(None, {"REJOINDER_SERVER__ADMIN_TOKEN": TOKEN,
                                "REJOINDER_SERVER__CALL_KEY": KEY})
    assert config.server.admin_token == TOKEN and config.server.call_key == KEY
    assert TOKEN not in repr(config) and KEY not in repr(config)
    for field, value in (("admin_token", "short"), ("call_key", " " + KEY)):
        with pytest.raises(ConfigError) as info:
            ServerOptions(**{field: value})
        assert info.value.field == f"server.{field}"


# -- the call key ------------------------------------------------------------------------
def test_call_tokens() -> None:
    now = 1_800_000_000.0
    token = mint_call_token(KEY, 300, now)
    assert token.startswith("1800000300.")
    assert check_call_token(token, KEY, now) is None
    assert check_call_token(token, KEY, now + 299) is None
    assert check_call_token(token, KEY, now + 300) == "expired"
    assert check_call_token(token, "another-key-0123456789", now) == "bad signature"
    assert check_call_token(token[:-1] + ("0" if token[-1] != "0" else "1"), KEY, now) == \
        "bad signature"
    assert check_call_token("1800000301." + token.split(".")[1], KEY, now) == "bad signature"
    assert check_call_token(mint_call_token(KEY, 2 * 86_400, now), KEY, now) == \
        "valid for too long"
    assert check_call_token(KEY, KEY, now) is None  # the key itself: a back end
    for junk in ("", "abc", "12.", ".abc", "-5.abc", "1e9.abc"):
        assert check_call_token(junk, KEY, now) in ("malformed", "bad signature"), junk


@pytest.fixture
async def keyed(tmp_path) -> AsyncIterator[tuple[Client, Server]]:
    client, server, recorder = await _start(
        tmp_path, ServerOptions(call_key=KEY, allowed_origins=["https://shop.example"]))
    try:
        yield client, server
    finally:
        await client.close()
        await recorder.close()


async def test_with_a_call_key_the_page_and_offers_need_a_call_token(keyed) -> None:
    client, server = keyed
    offer = {"type": "offer", "sdp": "x"}  # refused by the parser once past the key
    resp = await client.post("/api/offer", json=offer)
    assert (resp.status, (await resp.json())["code"]) == (401, "call_token_required")
    assert (await client.get("/")).status == 401
    assert (await client.get("/app.js")).status == 200  # the script holds nothing
    expired = mint_call_token(KEY, -1)
    forged = mint_call_token("not-the-key-0123456789", 300)
    for bad in (expired, forged):
        resp = await client.post("/api/offer", json=offer, headers={CALL_TOKEN_HEADER: bad})
        assert (resp.status, (await resp.json())["code"]) == (401, "bad_call_token")
        assert (await client.get("/", params={"call_token": bad})).status == 401
    good = mint_call_token(KEY, 300)
    resp = await client.post("/api/offer", json=offer, headers={CALL_TOKEN_HEADER: good})
    assert (resp.status, (await resp.json())["code"]) == (400, "bad_field")
    resp = await client.post(f"/api/offer?call_token={good}", json=offer)
    assert resp.status == 400
    resp = await client.post("/api/offer", json=offer, headers={CALL_TOKEN_HEADER: KEY})
    assert resp.status == 400
    assert (await client.get("/", params={"call_token": good})).status == 200
    assert not server.calls


async def test_cors_preflight_only_for_allowed_origins(keyed) -> None:
    client, _ = keyed
    ask = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": f"content-type,{CALL_TOKEN_HEADER.lower()}"}
    resp = await client.options("/api/offer", headers={**ask, "Origin": "https://shop.example"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert CALL_TOKEN_HEADER in resp.headers["Access-Control-Allow-Headers"]
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    for origin in ("https://evil.example", "http://shop.example", "null"):
        resp = await client.options("/api/offer", headers={**ask, "Origin": origin})
        assert resp.status == 403, origin
        assert "Access-Control-Allow-Origin" not in resp.headers
    # The allowed page may read the answer, a refusal too; no other page may.
    good = {CALL_TOKEN_HEADER: mint_call_token(KEY, 300)}
    resp = await client.post("/api/offer", json={"type": "offer", "sdp": "x"},
                             headers={**good, "Origin": "https://shop.example"})
    assert resp.status == 400
    assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    resp = await client.post("/api/offer", json={}, headers={**good,
                                                             "Origin": "https://evil.example"})
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    # The operator endpoints grant no CORS at all.
    resp = await client.get("/api/calls", headers={"Origin": "https://shop.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_call_ids_are_128_random_bits() -> None:
    calls = [Call(Config(), fake_stack(), lambda c: None) for _ in range(3)]
    try:
        ids = [c.id for c in calls]
        assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
        assert len(set(ids)) == 3
    finally:
        for c in calls:
            await c.close()
