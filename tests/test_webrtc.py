"""Real WebRTC between the terminal caller (aiortc) and the real server, fake providers."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from rejoinder.client.caller import CallFailed, place_call
from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack
from rejoinder.testing.loopback import script_audio

pytestmark = pytest.mark.slow


def _stack():
    return fake_stack(
        stt=FakeSTT(["hello agent", "and again"], Latency(first_s=0.1)),
        llm=FakeLLM(["Hello caller, nice to hear you.", "Sure thing."],
                    Latency(first_s=0.1, per_item_s=0.02)),
        tts=FakeTTS(Latency(first_s=0.05), rtf=0.2, sample_rate=24_000),
    )


AUDIO = script_audio([("silence", 0.5), ("speech", 1.0), ("silence", 3.0),
                      ("speech", 0.8), ("silence", 2.5)])


async def test_two_turns_over_real_webrtc(serve):
    async with serve(_stack()) as url:
        result = await place_call(url, AUDIO, tail_s=5)
    assert [t.user_text for t in result.turns] == ["hello agent", "and again"]
    assert [t.agent_text for t in result.turns] == ["Hello caller, nice to hear you.",
                                                     "Sure thing."]
    for t in result.turns:
        assert t.server is not None and t.server["outcome"] == "completed"
        sent = t.server["ms_after_speech_end"]["first_audio_sent"]
        # The caller hears the reply after the server sent it, and not absurdly later.
        assert t.v2v_ms is not None and sent < t.v2v_ms < sent + 400
    # Fixed provider latencies, started speculatively at the 100 ms pause (vad_end): 100 STT
    # + 100 LLM + 5 more tokens of 20 ms to the end of the clause + 50 TTS = 350 ms. The
    # pause is counted in samples but speech_end is when the last voiced frame was handled,
    # so frames that arrive in a burst (a busy machine) bring vad_end nearer to speech_end:
    # the floor holds from vad_end, the ceiling from speech_end.
    stages = result.turns[0].server["ms_after_speech_end"]
    assert stages["first_audio_sent"] - stages["vad_end"] > 350
    assert stages["first_audio_sent"] < 800
    audio = np.concatenate(result.received.chunks)
    assert np.abs(audio).max() > 3000  # the 440 Hz tone came back through Opus


BAD_OFFERS = [
    (b"not json", "bad_json"),
    (b'["offer"]', "bad_json"),
    (b'{"type": "answer", "sdp": "v=0"}', "bad_field"),
    (b'{"type": "offer", "sdp": 42}', "bad_field"),
    (b'{"type": "offer", "sdp": "hello"}', "bad_field"),
    (b'{"type": "offer", "sdp": "v=0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 111\\r\\nbogus"}',
     "no_candidates"),
    (b'{"type": "offer", "sdp": "v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\ns=-\\r\\nt=0 0\\r\\n"}',
     "no_candidates"),
]


async def test_malformed_offers_get_a_clear_4xx_and_the_server_keeps_serving(serve):
    async with serve(_stack()) as url:
        async with aiohttp.ClientSession() as http:
            for body, code in BAD_OFFERS:
                async with http.post(url + "/api/offer", data=body,
                                     headers={"Content-Type": "application/json"}) as resp:
                    assert resp.status == 400, body
                    assert (await resp.json())["code"] == code, body
            async with http.get(url + "/api/health") as resp:
                assert (await resp.json())["calls"] == 0
        result = await place_call(url, script_audio([("silence", 0.3), ("speech", 0.6),
                                                     ("silence", 2.0)]), tail_s=4)
    assert result.latencies(), "a good call after the bad offer was answered"


async def test_calls_beyond_the_limit_are_refused_with_503(serve):
    async with serve(_stack(), max_calls=1) as url:
        first = asyncio.create_task(place_call(url, AUDIO, tail_s=3))
        await asyncio.sleep(1.0)
        with pytest.raises(CallFailed, match=r"503.*capacity"):
            await place_call(url, AUDIO, tail_s=1)
        assert (await first).latencies()
