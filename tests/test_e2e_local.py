"""The embedded offline models end to end: real speech in over WebRTC, a spoken reply out."""

from __future__ import annotations

import numpy as np
import pytest

from rejoinder.client.caller import place_call
from rejoinder.core.audio import SAMPLE_RATE, read_wav
from rejoinder.providers.base import ChatMessage
from rejoinder.testing.wer import word_errors, words

pytestmark = pytest.mark.slow

LIBRIVOX = ("/usr/share/pocketsphinx/test/data/librivox/"
            "sense_and_sensibility_01_austen_64kb-0880.wav")


async def test_recorded_question_gets_transcribed_and_answered(serve, local_stack):
    from rejoinder.config import DEFAULT_SYSTEM_PROMPT

    await local_stack.warm([ChatMessage("system", DEFAULT_SYSTEM_PROMPT)])
    speech = read_wav(LIBRIVOX)
    silence = np.zeros(SAMPLE_RATE, dtype=np.int16)
    audio = np.concatenate([silence, speech, silence, silence, silence])
    async with serve(local_stack) as url:
        result = await place_call(url, audio, tail_s=20)
    (turn,) = result.turns
    # whisper tiny.en hears "He was not an old-sposed young man." (2 word errors)
    ref = words("he was not an ill disposed young man")
    assert word_errors(ref, words(turn.user_text)) <= 2, turn.user_text
    assert turn.agent_text.strip(), "the agent said something"
    assert turn.v2v_ms is not None and turn.v2v_ms > 0
    reply = np.concatenate(result.received.chunks)
    assert np.abs(reply).max() > 2000, "the reply is audible, not silence"
    assert turn.server is not None and turn.server["outcome"] == "completed"
