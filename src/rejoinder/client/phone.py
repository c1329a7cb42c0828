"""``rejoinder call --transport twilio``: the WAV spoken over a simulated phone line.

The twin of :func:`rejoinder.client.caller.place_call` for Twilio Media Streams
(:mod:`rejoinder.client.twilio`): the same measurements, from the audio the phone *played*
(a sample counts as heard when it starts playing, not when it arrives), on 8 kHz audio.
"""

from __future__ import annotations

import numpy as np

from rejoinder.client.caller import CallResult, _results, _until_quiet
from rejoinder.client.connection import CallFailed
from rejoinder.client.measure import find_utterances, onset_after
from rejoinder.client.phone_stages import fetch_phone_traces
from rejoinder.client.twilio import PHONE_RATE, PhoneCall, PhoneMic
from rejoinder.core.audio import PCM, SAMPLE_RATE, resample
from rejoinder.core.clock import Clock

__all__ = ["place_phone_call"]

POLL_S = 0.05


async def place_phone_call(url: str, pcm16k: PCM, *, auth_token: str | None,
                           lead_s: float = 1.0, tail_s: float = 20.0,
                           min_gap_s: float = 0.7) -> CallResult:
    """Call the server at ``url`` through its Twilio webhook and play ``pcm16k``.

    After the WAV ends, waits for the agent to answer the last utterance (at most
    ``tail_s`` seconds) and for that reply to finish playing. Media Streams carry no
    server events, so the turns' server stages and numbers come from the server's call
    store afterwards (none when it keeps no records); they have no transcripts.
    """
    clock = Clock()
    utterances = find_utterances(pcm16k, SAMPLE_RATE, min_gap_s=min_gap_s)
    if not utterances:
        raise CallFailed("the WAV has no speech louder than -40 dBFS")
    mic = PhoneMic(clock)
    lead = np.zeros(round(lead_s * PHONE_RATE), dtype=np.int16)
    first = mic.play(np.concatenate((lead, resample(pcm16k, SAMPLE_RATE, PHONE_RATE))))
    call = PhoneCall(mic, auth_token=auth_token)

    def time_of(offset_s: float) -> float | None:
        return mic.time_of(first + round((offset_s + lead_s) * PHONE_RATE))

    opened_wall = clock.wall()
    try:
        await call.open(url)
        await mic.idle.wait()
        last_eos = time_of(utterances[-1].end_s)
        assert last_eos is not None  # the whole WAV has been sent
        # The reply to the last utterance: its first sound, then 1.5 s of silence.
        deadline = clock.now() + tail_s
        while (onset_after(call.received.loud_times(), last_eos) is None
               and clock.now() < deadline and not call.hung_up.is_set()):
            await clock.sleep(POLL_S)
        await _until_quiet(call.received, clock, quiet_s=1.5, limit_s=tail_s)
    finally:
        await call.close()
    traces = await fetch_phone_traces(url, call.call_id, opened_wall, len(utterances))
    return _results(call.call_id, utterances, time_of, call.received,
                    [*call.events, *traces], call.wall_offset)
