"""Fuzz a live server: ``rejoinder fuzz --url URL --requests 10000``.

Generated requests and messages against every door a caller or an operator can knock
on: ``POST /api/offer`` (JSON and SDP, mutated from a real offer, so some reach aiortc
and start calls), the operator API (dates, paging, filters, the login form, bearer
tokens, call tokens), call records, Twilio's webhook (signed, unsigned and wrongly signed
when an auth token is given) and its media stream (a WebSocket: valid and broken
``start`` messages, then media, dtmf, mark, stop and garbage), plus bad Host and Origin
headers and unknown paths. It asserts:

- no 5xx (but 503 ``at_capacity``, the admission limit doing its job, which is counted);
- the server still answers ``/api/health`` at the end;
- no call slot leaked: ``calls`` back to 0 once the calls the fuzz started time out;
- stable memory: the server's RSS (``/proc/PID/status``) after the warm-up and at the
  end, growth within ``rss_growth_max_mb``.

Seeded: the same seed sends the same requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import aiohttp

# What gets through parse_offer when unmutated: aiortc answers it and a call starts,
# then times out unconnected (the candidate's port is nobody's).
_OFFER = "\r\n".join([
    "v=0", "o=- 3900000000 3900000000 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "a=group:BUNDLE 0 1", "a=msid-semantic:WMS *",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0", "c=IN IP4 0.0.0.0", "a=sendrecv", "a=mid:0",
    "a=rtcp:9 IN IP4 0.0.0.0", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
    "a=rtpmap:0 PCMU/8000", "a=ssrc:1 cname:fuzz",
    "a=ice-ufrag:fuzz", "a=ice-pwd:fuzzfuzzfuzzfuzzfuzzfuzz",
    "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
    "a=end-of-candidates",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass",
    "m=application 9 DTLS/SCTP 5000", "c=IN IP4 0.0.0.0", "a=mid:1",
    "a=sctpmap:5000 webrtc-datachannel 65535", "a=max-message-size:65536",
    "a=ice-ufrag:fuzz", "a=ice-pwd:fuzzfuzzfuzzfuzzfuzzfuzz",
    "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", ""])
_WEIRD = ["", "0", "-1", "1e400", "9" * 30, "²", "٣", "null", "true", "[]", "{}", "\x00",
          "💥", "a" * 300, "../../etc/passwd", "%00", "' OR 1=1 --", "<script>", "NaN",
          "9999-12-31", "0001-01-01T00:00:00+01:00", "2026-02-30", "2026-01-01T25:00",
          "hour", "day", "ended", "failed", "webrtc", "twilio"]
_PATHS = ["/", "/app.js", "/api/offer", "/api/health", "/metrics", "/api/calls",
          "/api/review", "/api/stats/latency", "/dashboard", "/dashboard/dashboard.js",
          "/dashboard/login", "/dashboard/logout", "/twilio/voice", "/twilio/media",
          "/api/calls/x", "/nosuch", "/dashboard/..%2f..%2fetc", "/api//offer"]
_FORM_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
               "multipart/form-data", "application/x-www-form-urlencoded; charset=nosuch",
               "application/x-www-form-urlencoded; charset=utf-16"]
_QUERY_KEYS = ["from", "to", "limit", "offset", "outcome", "transport", "agent", "bucket",
               "call_token"]


@dataclass
class FuzzReport:
    """What the fuzz sent and saw."""

    requests: int = 0  # HTTP requests and WebSocket messages sent
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "403", "ws", ...
    failures: list[str] = field(default_factory=list)
    calls_started: int = 0
    rss_start_kb: int | None = None
    rss_end_kb: int | None = None
    duration_s: float = 0.0
    tracebacks: int | None = None  # in the server's log, when the fuzz started the server

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        rss = "" if self.rss_start_kb is None or self.rss_end_kb is None else \
            f"; server RSS {self.rss_start_kb / 1024:.1f} -> {self.rss_end_kb / 1024:.1f} MiB"
        logged = "" if self.tracebacks is None else \
            f"; {self.tracebacks} tracebacks in the server log"
        lines = [f"{self.requests} requests and messages in {self.duration_s:.1f} s "
                 f"({counts}); calls started {self.calls_started}{rss}{logged}"]
        lines += [f"FAIL: {f}" for f in self.failures[:20]]
        return "\n".join(lines)


def rss_kb(pid: int) -> int | None:
    """The process's resident set (VmRSS) in KiB; None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Fuzzer:
    def __init__(self, url: str, session: aiohttp.ClientSession, rng: random.Random,
                 report: FuzzReport, auth_token: str | None, public_url: str | None) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.rng = rng
        self.report = report
        self.auth_token = auth_token
        self.public_url = (public_url or self.url).rstrip("/")
        self.host = urlsplit(self.url).netloc

    # -- generators -----------------------------------------------------------------------
    def _weird(self) -> str:
        return self.rng.choice(_WEIRD) if self.rng.random() < 0.7 else \
            "".join(chr(self.rng.choice([self.rng.randrange(32, 127),
                                         self.rng.randrange(160, 0x2FFF)]))
                    for _ in range(self.rng.randrange(0, 12)))

    def _header_text(self) -> str:  # what an HTTP header can carry (latin-1, no CR/LF)
        return "".join(chr(self.rng.choice([self.rng.randrange(32, 127),
                                            self.rng.randrange(160, 256)]))
                       for _ in range(self.rng.randrange(30)))

    def _sdp(self) -> str:
        lines = _OFFER.split("\r\n")
        r = self.rng
        for _ in range(r.choice([0, 0, 1, 2, 5])):
            i = r.randrange(len(lines))
            op = r.randrange(5)
            if op == 0:
                del lines[i]
            elif op == 1:
                lines.insert(i, lines[r.randrange(len(lines))])
            elif op == 2:
                lines[i] = lines[i][: r.randrange(len(lines[i]) + 1)]
            elif op == 3:
                lines[i] = lines[i] + " " + self._weird()
            else:
                lines[i] = lines[i].replace(r.choice("0123456789 :/"), self._weird(), 1)
        return r.choice(["\r\n", "\n"]).join(lines)

    def _headers(self) -> dict[str, str]:
        r = self.rng
        headers: dict[str, str] = {}
        if r.random() < 0.1:
            headers["Host"] = r.choice(["evil.example", "127.0.0.1:1", "[::1", "",
                                        self._header_text()])
        if r.random() < 0.15:
            headers["Origin"] = r.choice(["https://evil.example", "null", "http://" + self.host,
                                          self._header_text()])
        if r.random() < 0.15:
            headers["Authorization"] = r.choice(["Bearer ", "Bearer x", "Basic x",
                                                 "Bearer " + self._header_text()])
        if r.random() < 0.1:
            headers["X-Rejoinder-Call-Token"] = r.choice(["1.x", "².x", self._header_text()])
        if r.random() < 0.1:
            headers["Cookie"] = "rejoinder_session=" + r.choice(["x", "", "a" * 100])
        return headers

    # -- one request ----------------------------------------------------------------------
    async def one(self) -> None:
        r = self.rng.random()
        if r < 0.30:
            await self._offer()
        elif r < 0.55:
            await self._operator()
        elif r < 0.70:
            await self._voice()
        elif r < 0.80:
            await self._media()
        else:
            await self._anything()

    async def _send(self, method: str, path: str, *, data: bytes | str | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, str]:
        self.report.requests += 1
        try:
            async with self.session.request(method, self.url + path, data=data,
                                            headers=headers, allow_redirects=False) as resp:
                body = await resp.text(errors="replace")
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.report.statuses["no answer"] += 1
            self.report.failures.append(f"{method} {path[:60]}: no answer "
                                        f"({type(exc).__name__})")
            return 0, ""
        code = ""
        if status >= 500 and method == "HEAD":  # no body to say why: ask again with GET
            try:
                async with self.session.get(self.url + path, headers=headers,
                                            allow_redirects=False) as again:
                    body = await again.text(errors="replace")
            except (aiohttp.ClientError, TimeoutError):
                body = ""
        if status >= 500:
            try:
                code = str(json.loads(body).get("code", ""))
            except (ValueError, AttributeError):
                code = ""
            if not (status == 503 and code == "at_capacity"):
                self.report.failures.append(f"{method} {path[:60]}: {status} {body[:120]!r}")
        self.report.statuses[f"{status}" + (f" {code}" if code else "")] += 1
        return status, body

    async def _offer(self) -> None:
        r = self.rng
        pick = r.random()
        if pick < 0.6:
            body: object = {"type": "offer", "sdp": self._sdp()}
        elif pick < 0.8:
            body = {r.choice(["type", "sdp", self._weird()]): r.choice(
                [self._weird(), 1, None, [], {"sdp": "v=0"}]) for _ in range(r.randrange(3))}
        else:
            body = r.choice([[], 1, None, "offer", {"type": "offer"}])
        raw = json.dumps(body) if r.random() < 0.9 else \
            r.choice(["{", "[" * 5000, "\xff", json.dumps(body)[:-1]])
        headers = {"Content-Type": r.choice(["application/json"] * 8 + [
            "text/plain", "application/json; charset=latin-1", "application/json; charset=x",
            self._header_text()])}
        status, body_text = await self._send("POST", "/api/offer",
                                             data=raw.encode("utf-8", "surrogatepass"),
                                             headers={**headers, **self._headers()})
        if status == 200 and '"call_id"' in body_text:
            self.report.calls_started += 1

    async def _operator(self) -> None:
        r = self.rng
        path = r.choice(["/api/calls", "/api/review", "/api/stats/latency", "/dashboard",
                         "/metrics", "/api/calls/" + r.choice(["x", "0" * 32, "%2e%2e"]),
                         "/dashboard/login", "/dashboard/logout"])
        query = urlencode({k: self._weird() for k in r.sample(_QUERY_KEYS, r.randrange(4))})
        if path.startswith("/dashboard/log"):
            form = urlencode({r.choice(["token", "x"]): self._weird()})
            await self._send("POST", path, data=form, headers={
                "Content-Type": r.choice(_FORM_TYPES + ["text/plain"]),
                **self._headers()})
        else:
            method = "DELETE" if path.startswith("/api/calls/") and r.random() < 0.3 else "GET"
            await self._send(method, f"{path}?{query}" if query else path,
                             headers=self._headers())

    def _signature(self, url: str, params: dict[str, str]) -> dict[str, str]:
        if self.auth_token is None:
            return {}
        from twilio.request_validator import RequestValidator

        pick = self.rng.random()
        if pick < 0.6:
            sig = RequestValidator(self.auth_token).compute_signature(url, params)
        elif pick < 0.8:
            sig = base64.b64encode(self.rng.randbytes(20)).decode()
        else:
            return {}
        return {"X-Twilio-Signature": sig}

    async def _voice(self) -> str | None:
        r = self.rng
        params = {k: r.choice([self._weird(), "CA" + "0" * 32, "+15550100"])
                  for k in r.sample(["CallSid", "From", "To", "AccountSid", "x"],
                                    r.randrange(5))}
        headers = {"Content-Type": r.choice(["application/x-www-form-urlencoded"] * 6
                                            + _FORM_TYPES + ["application/json"]),
                   **self._signature(self.public_url + "/twilio/voice", params)}
        status, body = await self._send("POST", "/twilio/voice", data=urlencode(params),
                                        headers=headers)
        if status != 200 or 'name="token"' not in body:
            return None
        return body.split('name="token" value="', 1)[-1].split('"', 1)[0]

    async def _media(self) -> None:
        r = self.rng
        token = await self._voice() if r.random() < 0.7 else None
        stream_url = "ws" + self.public_url[4:] + "/twilio/media"
        headers = self._signature(stream_url, {})
        self.report.requests += 1
        try:
            async with self.session.ws_connect(self.url + "/twilio/media", headers=headers,
                                               heartbeat=None) as ws:
                self.report.statuses["ws 101"] += 1
                for message in self._stream(token):
                    if ws.closed:
                        break
                    self.report.requests += 1
                    if isinstance(message, bytes):
                        await ws.send_bytes(message)
                    else:
                        await ws.send_str(message)
                await ws.close()
        except aiohttp.WSServerHandshakeError as exc:
            self.report.statuses[f"ws {exc.status}"] += 1
            if exc.status >= 500 and exc.status != 503:
                self.report.failures.append(f"GET /twilio/media: {exc.status}")
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            self.report.statuses["ws dropped"] += 1  # the server may close a refused stream
            del exc

    def _stream(self, token: str | None) -> list[str | bytes]:
        r = self.rng
        sid = "MZ" + "1" * 32
        start: dict[str, object] = {
            "streamSid": sid, "callSid": "CA" + "0" * 32,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"token": token or self._weird()}}
        if r.random() < 0.3:
            start[r.choice(list(start))] = r.choice([self._weird(), None, 1, {}])
        out: list[str | bytes] = [json.dumps({"event": "connected"}),
                                  json.dumps({"event": "start", "sequenceNumber": "1",
                                              "start": start, "streamSid": sid})]
        seq = 2
        for _ in range(r.randrange(1, 40)):
            pick = r.random()
            if pick < 0.5:
                payload = base64.b64encode(r.randbytes(r.choice([160] * 6 + [0, 1, 159, 161])))
                message: dict[str, object] = {"event": "media", "streamSid": sid,
                                   "sequenceNumber": str(seq), "media": {
                                       "track": "inbound", "chunk": str(seq),
                                       "payload": payload.decode()}}
            elif pick < 0.6:
                message = {"event": "dtmf", "streamSid": sid, "sequenceNumber": str(seq),
                           "dtmf": {"digit": r.choice(["1", "#", "x", "", "²"])}}
            elif pick < 0.7:
                message = {"event": "mark", "streamSid": sid, "mark": {"name": self._weird()}}
            elif pick < 0.9:
                message = {r.choice(["event", "streamSid", "sequenceNumber", "media"]):
                           r.choice([self._weird(), None, 1, [], "media", "start"])}
            else:
                junk: list[str | bytes] = [b"\x00\x01", "[" * 3000, "{", "null", self._weird()]
                out.append(r.choice(junk))
                continue
            if r.random() < 0.1:
                message["sequenceNumber"] = r.choice(["0", "²", "-1", 1.5])
            out.append(json.dumps(message))
            seq += 1
        if r.random() < 0.5:
            out.append(json.dumps({"event": "stop", "streamSid": sid}))
        return out

    async def _anything(self) -> None:
        r = self.rng
        path = r.choice(_PATHS)
        if r.random() < 0.2:
            path += "/" + "".join(r.choice("abc%2F.-_~") for _ in range(r.randrange(12)))
        method = r.choice(["GET", "GET", "POST", "DELETE", "PUT", "OPTIONS", "HEAD", "PATCH"])
        data = None if method in ("GET", "HEAD") else self._weird().encode()
        await self._send(method, path, data=data, headers=self._headers())


async def _health(session: aiohttp.ClientSession, url: str) -> dict[str, object] | None:
    try:
        async with session.get(url.rstrip("/") + "/api/health") as resp:
            if resp.status != 200:
                return None
            data: dict[str, object] = await resp.json()
            return data
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def fuzz(url: str, requests: int, *, seed: int = 0, concurrency: int = 8,
               auth_token: str | None = None, public_url: str | None = None,
               pid: int | None = None, warmup: int = 500, settle_s: float = 60.0,
               rss_growth_max_mb: float = 64.0) -> FuzzReport:
    """Send at least ``requests`` generated requests and messages to the server at ``url``
    and check it afterwards (module docstring). ``pid``: the server's process, for RSS."""
    report = FuzzReport()
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=30)
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if await _health(session, url) is None:
            report.failures.append(f"{url} does not answer /api/health")
            return report
        fuzzer = _Fuzzer(url, session, rng, report, auth_token, public_url)
        warmup = min(warmup, requests // 10)

        async def worker() -> None:
            while report.requests < requests:
                await fuzzer.one()
                if pid is not None and report.rss_start_kb is None \
                        and report.requests >= warmup:
                    report.rss_start_kb = rss_kb(pid)

        # One generator shared by the workers: the same seed sends the same requests,
        # though their interleaving on the server depends on timing.
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        health = await _health(session, url)
        if health is None:
            report.failures.append("the server no longer answers /api/health")
        deadline = time.monotonic() + settle_s
        while health is not None and health.get("calls") != 0 \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            health = await _health(session, url)
        if health is not None and health.get("calls") != 0:
            report.failures.append(f"{health.get('calls')} calls still held {settle_s:.0f} s "
                                   "after the last request (a leaked call slot)")
    if pid is not None:
        report.rss_end_kb = rss_kb(pid)
        if report.rss_start_kb is not None and report.rss_end_kb is not None:
            growth_mb = (report.rss_end_kb - report.rss_start_kb) / 1024
            if growth_mb > rss_growth_max_mb:
                report.failures.append(f"server RSS grew {growth_mb:.1f} MiB (more than "
                                       f"{rss_growth_max_mb:g} MiB)")
        else:
            report.failures.append(f"cannot read the RSS of process {pid}")
    report.duration_s = time.monotonic() - started
    return report


async def fuzz_own_server(requests: int, *, seed: int = 0, concurrency: int = 8,
                          auth_token: str | None = None, settle_s: float = 60.0,
                          rss_growth_max_mb: float = 64.0) -> FuzzReport:
    """Start ``rejoinder serve --stack fake`` (phone calls on: unsigned, or signed with
    ``auth_token``; records in a temporary folder), fuzz it, stop it."""
    import os
    import socket
    import sys
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="rejoinder-fuzz-") as home:
        # Room for the calls the valid offers start (each holds its slot until it times
        # out unconnected), so the phone stream is fuzzed too, not only refused at capacity.
        env = {**os.environ, "XDG_DATA_HOME": home, "REJOINDER_LOG__LEVEL": "WARNING",
               "REJOINDER_LOG__JSON": "false", "REJOINDER_SERVER__MAX_CALLS": "64"}
        if auth_token:
            env |= {"REJOINDER_TELEPHONY__TWILIO_AUTH_TOKEN": auth_token,
                    "REJOINDER_TELEPHONY__PUBLIC_URL": url}
        else:
            env["REJOINDER_TELEPHONY__ALLOW_UNSIGNED"] = "true"
        log_path = Path(home) / "server.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rejoinder", "serve", "--stack", "fake", "--port",
                str(port), env=env, stdout=log_file, stderr=asyncio.subprocess.STDOUT)
            try:
                async with aiohttp.ClientSession() as session:
                    for _ in range(300):
                        if await _health(session, url) is not None or \
                                proc.returncode is not None:
                            break
                        await asyncio.sleep(0.1)
                report = await fuzz(url, requests, seed=seed, concurrency=concurrency,
                                    auth_token=auth_token, pid=proc.pid, settle_s=settle_s,
                                    rss_growth_max_mb=rss_growth_max_mb)
            finally:
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), 10)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        logged = log_path.read_text(errors="replace")  # noqa: ASYNC240 (once, at the end)
        if keep := os.environ.get("REJOINDER_FUZZ_KEEP_LOG"):
            Path(keep).write_text(logged)  # noqa: ASYNC240
        # Reported, not failed on: a traceback that is none of the checks above (no 5xx,
        # no slot held, memory) harmed no caller; the log is kept with REJOINDER_FUZZ_KEEP_LOG.
        report.tracebacks = logged.count("Traceback")
    return report
