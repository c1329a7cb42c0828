"""The per-turn trace: server timestamps of each stage of one turn.

Stages (design.md): speech end (last voiced frame), VAD end detected, turn
confirmed, STT final ready, LLM first token, first clause ready, TTS first
audio, first audio packet sent. Times are the server's monotonic clock; the
record carries them as milliseconds after the server-side end of speech, plus
the wall time of that end of speech so that a caller can join records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("rejoinder.trace")

STAGES = (
    "speech_end",
    "vad_end",
    "turn_confirmed",
    "stt_final",
    "llm_first_token",
    "first_clause",
    "tts_first_audio",
    "first_audio_sent",
)


@dataclass
class TurnTrace:
    call_id: str
    turn: int
    wall_offset: float  # wall time minus monotonic time, when the call started
    stamps: dict[str, float] = field(default_factory=dict)
    outcome: str = "pending"  # completed | interrupted | abandoned | failed | empty
    error: str | None = None
    # "committed": the reply started speculatively at the pause and was kept; "restarted":
    # the caller made sounds after a speculation started (too short to drop it), and it was
    # started again at their next pause, on the words said since (when those were the same
    # words it went on: "committed"); None: not speculative.
    speculation: str | None = None
    # The reply's first clause came from the phrase cache (no TTS wait); None: not known yet.
    tts_cached: bool | None = None

    def mark(self, stage: str, t: float) -> None:
        self.stamps.setdefault(stage, t)

    def record(self) -> dict[str, object]:
        base = self.stamps.get("speech_end")
        ms: dict[str, float] = {}
        if base is not None:
            ms = {s: round((self.stamps[s] - base) * 1000.0, 1)
                  for s in STAGES if s in self.stamps}
        return {
            "event": "turn",
            "call_id": self.call_id,
            "turn": self.turn,
            "outcome": self.outcome,
            "speech_end_wall": None if base is None else round(base + self.wall_offset, 4),
            "ms_after_speech_end": ms,
            "speculation": self.speculation,
            "tts_cached": self.tts_cached,
            **({"error": self.error} if self.error else {}),
        }

    def emit(self) -> dict[str, object]:
        rec = self.record()
        log.info("turn %d %s", self.turn, self.outcome, extra={"record": rec})
        return rec
