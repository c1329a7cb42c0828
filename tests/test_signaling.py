"""The signaling API against hostile requests: the real server (fake providers), real
offers from aiortc, nothing connects. Every refusal is a 4xx with a stable message and
a code, the server keeps serving, and no refused request holds a call slot."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from aiortc import RTCPeerConnection

from rejoinder.config import ServerOptions
from rejoinder.core.errors import ConfigError, SignalingError
from rejoinder.server.guard import MAX_BODY_BYTES, check_host, check_origin
from rejoinder.testing import fake_stack
from rejoinder.transports.webrtc import pinned_host_addresses

JSON = {"Content-Type": "application/json"}


async def real_offer(*, audio: bool = True) -> str:
    """A complete offer as the page sends it: audio, the events channel, candidates."""
    pc = RTCPeerConnection()
    pc.createDataChannel("events")
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    with pinned_host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def _sub(pattern: str, replacement: str) -> Callable[[str], str]:
    return lambda sdp: re.sub(pattern, replacement, sdp, flags=re.M)


def _unknown_codecs(sdp: str) -> str:
    sdp = re.sub(r"^(m=audio \d+ \S+) .*$", r"\1 111", sdp, flags=re.M)
    return re.sub(r"^a=rtpmap:\d+ .*$", "a=rtpmap:111 nonsense/8000", sdp, flags=re.M)


def _many_sections(sdp: str) -> str:
    head, _, audio = sdp.partition("m=audio")
    audio = "m=audio" + audio.split("m=application")[0]
    return head + audio * 5


def _offer(sdp: str) -> bytes:
    return json.dumps({"type": "offer", "sdp": sdp}).encode()


# (name, body, headers, status, code). A body that is a function receives a fresh,
# complete offer and returns the bytes to send.
Body = bytes | Callable[[str], bytes]
HOSTILE: list[tuple[str, Body, dict[str, str], int, str]] = [
    ("deeply nested array", b"[" * 5000 + b"]" * 5000, JSON, 400, "bad_json"),
    ("deeply nested object", b'{"a":' * 3000 + b"1" + b"}" * 3000, JSON, 400, "bad_json"),
    ("deep nesting inside sdp", b'{"type": "offer", "sdp": ' + b"[" * 3000 + b"]" * 3000
     + b"}", JSON, 400, "bad_json"),
    ("bogus charset", _offer, {"Content-Type": "application/json; charset=bogus-xx"}, 415,
     "unsupported_media_type"),
    ("utf-16 charset", _offer, {"Content-Type": "application/json; charset=utf-16"}, 415,
     "unsupported_media_type"),
    ("invalid utf-8", b'{"type": "offer", "sdp": "v=0\xff\xfe"}', JSON, 400, "bad_json"),
    ("huge body", b'{"type": "offer", "sdp": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}', JSON,
     413, "too_large"),
    ("not json", b"not json", JSON, 400, "bad_json"),
    ("json array", b'["offer"]', JSON, 400, "bad_json"),
    ("json number", b"42", JSON, 400, "bad_json"),
    ("json null", b"null", JSON, 400, "bad_json"),
    ("huge integer", b'{"type": "offer", "sdp": ' + b"9" * 10_000 + b"}", JSON, 400,
     "bad_json"),
    ("empty body", b"", JSON, 400, "bad_json"),
    ("binary garbage", bytes(range(256)) * 4, JSON, 400, "bad_json"),
    ("binary garbage, no type", bytes(range(256)) * 4, {}, 415, "unsupported_media_type"),
    ("text/plain offer", _offer, {"Content-Type": "text/plain"}, 415,
     "unsupported_media_type"),
    ("form offer", _offer, {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type"),
    ("missing fields", b"{}", JSON, 400, "bad_field"),
    ("missing sdp", b'{"type": "offer"}', JSON, 400, "bad_field"),
    ("type answer", b'{"type": "answer", "sdp": "v=0"}', JSON, 400, "bad_field"),
    ("sdp number", b'{"type": "offer", "sdp": 42}', JSON, 400, "bad_field"),
    ("sdp list", b'{"type": "offer", "sdp": ["v=0"]}', JSON, 400, "bad_field"),
    ("sdp object", b'{"type": "offer", "sdp": {"v": 0}}', JSON, 400, "bad_field"),
    ("sdp null", b'{"type": "offer", "sdp": null}', JSON, 400, "bad_field"),
    ("sdp not sdp", b'{"type": "offer", "sdp": "hello"}', JSON, 400, "bad_field"),
    ("no media at all", _offer("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"), JSON, 400,
     "no_candidates"),
    ("no candidates", lambda o: _offer(_sub(r"^a=(candidate:.*|end-of-candidates)\r?\n", "")(o)),
     JSON, 400, "no_candidates"),
    ("tcp candidates only", lambda o: _offer(_sub(r" udp ", " tcp ")(o)), JSON, 400,
     "no_candidates"),
    ("too many media sections", lambda o: _offer(_many_sections(o)), JSON, 400, "bad_offer"),
    ("no fingerprint", lambda o: _offer(_sub(r"^a=fingerprint:.*\r?\n", "")(o)), JSON, 400,
     "bad_offer"),
    ("no ice credentials", lambda o: _offer(_sub(r"^a=ice-(ufrag|pwd):.*\r?\n", "")(o)), JSON,
     400, "bad_offer"),
    ("garbage candidate",
     lambda o: _offer(_sub(r"^a=candidate:.*$", "a=candidate:x 1 udp nan 127.0.0.1 1 typ host")(o)),
     JSON, 400, "bad_offer"),
    ("rtpmap without rate", lambda o: _offer(_sub(r"^a=rtpmap:96 .*$", "a=rtpmap:96 opus")(o)),
     JSON, 400, "bad_offer"),
    ("no common codec", lambda o: _offer(_unknown_codecs(o)), JSON, 400, "bad_offer"),
    ("truncated", lambda o: _offer(o[: len(o) // 2]), JSON, 400, "bad_offer"),
    ("bad setup role", lambda o: _offer(_sub(r"^a=setup:.*$", "a=setup:bogus")(o)), JSON, 400,
     "bad_offer"),
    ("no rtcp-mux", lambda o: _offer(_sub(r"^a=rtcp-mux\r?\n", "")(o)), JSON, 400, "bad_offer"),
    ("bad ssrc", lambda o: _offer(_sub(r"^a=ssrc:\d+", "a=ssrc:abc")(o)), JSON, 400,
     "bad_offer"),
    ("bad connection line", lambda o: _offer(_sub(r"^c=IN IP4 .*$", "c=IN")(o)), JSON, 400,
     "bad_offer"),
    ("video instead of audio", lambda o: _offer(_sub(r"^m=audio", "m=video")(o)), JSON, 400,
     "bad_offer"),
]

# What a Python message or traceback looks like; none of it may reach the caller.
_INTERNALS = re.compile(r"Error\b|Exception|Traceback|NoneType|object has no|attribute|\.py")


def _assert_clean(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error", "code"}, body
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and 0 < len(body["error"]) < 200, body
    assert not _INTERNALS.search(body["error"]), body


@pytest.mark.parametrize("name,body,headers,status,code", HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_requests_get_a_4xx_with_a_code_and_hold_no_slot(
        serve: Any, name: str, body: Body, headers: dict[str, str], status: int,
        code: str) -> None:
    async with serve(fake_stack()) as url, aiohttp.ClientSession() as http:
        data = body(await real_offer()) if callable(body) else body
        async with http.post(url + "/api/offer", data=data, headers=headers) as resp:
            assert resp.status == status, await resp.text()
            _assert_clean(await resp.json(), code)
        async with http.get(url + "/api/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["calls"] == 0


async def test_an_offer_without_audio_is_refused_with_its_code(serve: Any) -> None:
    async with serve(fake_stack()) as url, aiohttp.ClientSession() as http:
        data = _offer(await real_offer(audio=False))
        async with http.post(url + "/api/offer", data=data, headers=JSON) as resp:
            assert resp.status == 400
            _assert_clean(await resp.json(), "no_audio")
        async with http.get(url + "/api/health") as resp:
            assert (await resp.json())["calls"] == 0


async def test_a_good_offer_is_answered_after_hostile_ones(serve: Any) -> None:
    async with serve(fake_stack(), connect_timeout_s=0.5) as url, \
            aiohttp.ClientSession() as http:
        for data in (b"[" * 5000, b"\xff\xfe", b"{}"):
            async with http.post(url + "/api/offer", data=data, headers=JSON) as resp:
                assert 400 <= resp.status < 500
        async with http.post(url + "/api/offer", data=_offer(await real_offer()),
                             headers=JSON) as resp:
            assert resp.status == 200
            answer = await resp.json()
    assert answer["type"] == "answer" and answer["sdp"].startswith("v=0")


async def test_aiohttp_refusals_are_json_with_a_code(serve: Any) -> None:
    async with serve(fake_stack()) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/api/offer") as resp:
            assert resp.status == 405
            _assert_clean(await resp.json(), "method_not_allowed")
        async with http.get(url + "/api/nothing") as resp:
            assert resp.status == 404
            _assert_clean(await resp.json(), "not_found")
        async with http.get(url + "/api/calls/<script>") as resp:
            assert resp.status == 404
            body = await resp.json()
            _assert_clean(body, "not_found")
            assert "script" not in body["error"]


# -- Origin and Host ----------------------------------------------------------------------
async def test_a_cross_origin_page_cannot_start_a_call(serve: Any) -> None:
    async with serve(fake_stack()) as url, aiohttp.ClientSession() as http:
        offer = _offer(await real_offer())
        # The request a foreign page can send without a CORS preflight.
        for headers in ({"Origin": "http://evil.example", "Content-Type": "text/plain"},
                        {"Origin": "http://evil.example", **JSON},
                        {"Origin": "null", **JSON},
                        {"Origin": url.replace("127.0.0.1", "localhost"), **JSON}):
            async with http.post(url + "/api/offer", data=offer, headers=headers) as resp:
                assert resp.status == 403, headers
                _assert_clean(await resp.json(), "forbidden_origin")
        async with http.get(url + "/api/health") as resp:
            assert (await resp.json())["calls"] == 0


async def test_the_servers_own_page_and_programs_can_start_calls(serve: Any) -> None:
    async with serve(fake_stack(), connect_timeout_s=0.5) as url, \
            aiohttp.ClientSession() as http:
        for headers in ({"Origin": url, **JSON}, JSON):  # the page; rejoinder call, curl
            async with http.post(url + "/api/offer", data=_offer(await real_offer()),
                                 headers=headers) as resp:
                assert resp.status == 200, await resp.text()


async def test_listed_origins_can_start_calls(serve: Any) -> None:
    async with serve(fake_stack(), connect_timeout_s=0.5,
                     allowed_origins=["https://app.example.org"]) as url, \
            aiohttp.ClientSession() as http:
        ok = {"Origin": "https://app.example.org", **JSON}
        async with http.post(url + "/api/offer", data=_offer(await real_offer()),
                             headers=ok) as resp:
            assert resp.status == 200
        other = {"Origin": "https://app.example.org:8443", **JSON}
        async with http.post(url + "/api/offer", data=_offer(await real_offer()),
                             headers=other) as resp:
            assert resp.status == 403


async def test_a_loopback_server_answers_only_to_loopback_names(serve: Any) -> None:
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1."""
    async with serve(fake_stack()) as url, aiohttp.ClientSession() as http:
        port = int(url.rsplit(":", 1)[1])
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        async with http.post(url + "/api/offer", data=_offer(await real_offer()),
                             headers={**rebound, **JSON}) as resp:
            assert resp.status == 403
            _assert_clean(await resp.json(), "forbidden_host")
        for host in (f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}",
                     f"localhost.evil.example:{port}"):
            async with http.get(url + "/api/health", headers={"Host": host}) as resp:
                assert resp.status == 403, host
                _assert_clean(await resp.json(), "forbidden_host")
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
            async with http.get(url + "/api/health", headers={"Host": host}) as resp:
                assert resp.status == 200, host


def _request(host: str | None, origin: str | None = None, port: int = 8080) -> Any:
    class Transport:
        def get_extra_info(self, name: str, default: object = None) -> object:
            return ("10.0.0.5", port) if name == "sockname" else default

    headers = {k: v for k, v in (("Host", host), ("Origin", origin)) if v is not None}
    return make_mocked_request("POST", "/api/offer", headers=headers, transport=Transport())


def _refused(check: Callable[[], None]) -> str | None:
    try:
        check()
    except SignalingError as exc:
        return exc.code
    return None


def test_host_policy() -> None:
    loopback, anywhere = "127.0.0.1", "0.0.0.0"
    assert _refused(lambda: check_host(_request("localhost:8080"), loopback, [])) is None
    assert _refused(lambda: check_host(_request("[::1]:8080"), "::1", [])) is None
    assert _refused(lambda: check_host(_request("evil.example:8080"), loopback, [])) \
        == "forbidden_host"
    assert _refused(lambda: check_host(_request(None), loopback, [])) == "forbidden_host"
    # Bound to every interface, nothing configured: any Host.
    assert _refused(lambda: check_host(_request("voice.example.org"), anywhere, [])) is None
    assert _refused(lambda: check_host(_request("10.0.0.5:8080"), anywhere, [])) is None
    # Configured: only those, with or without a port.
    names = ["voice.example.org", "lan-box:8080"]
    assert _refused(lambda: check_host(_request("Voice.Example.org:443"), anywhere, names)) \
        is None
    assert _refused(lambda: check_host(_request("lan-box:8080"), anywhere, names)) is None
    assert _refused(lambda: check_host(_request("lan-box:9090"), anywhere, names)) \
        == "forbidden_host"
    assert _refused(lambda: check_host(_request("localhost:8080"), loopback, names)) \
        == "forbidden_host"
    assert _refused(lambda: check_host(_request("x.example"), loopback, ["*"])) is None
    assert _refused(lambda: check_host(_request("a:b:c"), anywhere, names)) == "forbidden_host"


def test_origin_policy() -> None:
    def refused(host: str, origin: str | None, allowed: list[str] | None = None) -> str | None:
        return _refused(lambda: check_origin(_request(host, origin), allowed or []))

    assert refused("voice.example.org", None) is None  # a program
    assert refused("voice.example.org", "https://voice.example.org") is None
    # Behind a TLS-terminating proxy the page is https and the server sees http.
    assert refused("voice.example.org:8080", "https://voice.example.org:8080") is None
    assert refused("voice.example.org", "https://voice.example.org:8443") == "forbidden_origin"
    assert refused("voice.example.org", "https://evil.example") == "forbidden_origin"
    assert refused("voice.example.org", "https://evil.example/path") == "forbidden_origin"
    assert refused("voice.example.org", "null") == "forbidden_origin"
    assert refused("voice.example.org", "null", ["null"]) is None
    assert refused("voice.example.org", "https://app.example.org",
                   ["https://APP.example.org:443"]) is None
    assert refused("voice.example.org", "http://app.example.org",
                   ["https://app.example.org"]) == "forbidden_origin"
    assert refused("voice.example.org", "https://anything.example", ["*"]) is None


def test_server_options_are_validated() -> None:
    ServerOptions(allowed_origins=["https://a.example", "http://b.example:8080", "*", "null"],
                  allowed_hosts=["a.example", "b.example:8443", "[::1]:8080", "*"])
    for bad in ({"connect_timeout_s": 0.0}, {"media_timeout_s": -1.0},
                {"allowed_origins": ["a.example"]}, {"allowed_origins": ["https://a/x"]},
                {"allowed_hosts": ["https://a.example"]}, {"allowed_hosts": ["a b"]}):
        with pytest.raises(ConfigError, match=f"server.{next(iter(bad))}"):
            ServerOptions(**bad)  # type: ignore[arg-type]
