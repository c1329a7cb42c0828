"""The embedded models over a phone line: a recorded question through the simulated Twilio
caller (8 kHz mu-law both ways, signed webhook and stream) is transcribed and answered."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket

import numpy as np
import pytest

from rejoinder.client.phone import place_phone_call
from rejoinder.config import DEFAULT_SYSTEM_PROMPT, Config, ServerOptions, TelephonyOptions
from rejoinder.core.audio import SAMPLE_RATE, read_wav
from rejoinder.providers.base import ChatMessage
from rejoinder.server.app import run_server

pytestmark = pytest.mark.slow

LIBRIVOX = ("/usr/share/pocketsphinx/test/data/librivox/"
            "sense_and_sensibility_01_austen_64kb-0880.wav")
AUTH = "0123456789abcdef0123456789abcdef"


async def test_a_recorded_question_over_the_phone_is_answered(local_stack) -> None:
    await local_stack.warm([ChatMessage("system", DEFAULT_SYSTEM_PROMPT)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    config = dataclasses.replace(
        Config(), server=ServerOptions(host="127.0.0.1", port=port),
        telephony=TelephonyOptions(public_url=url, twilio_auth_token=AUTH))
    ready = asyncio.Event()
    task = asyncio.create_task(run_server(config, local_stack, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    speech = read_wav(LIBRIVOX)
    silence = np.zeros(SAMPLE_RATE, dtype=np.int16)
    try:
        result = await place_phone_call(url, np.concatenate([speech, silence]),
                                        auth_token=AUTH, tail_s=20)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [e for e in result.events if e.get("type") == "protocol_error"] == []
    (turn,) = result.turns
    assert turn.v2v_ms is not None and turn.v2v_ms > 0
    reply = np.concatenate(result.received.chunks)
    assert np.abs(reply).max() > 2000, "the reply is audible, not silence"
