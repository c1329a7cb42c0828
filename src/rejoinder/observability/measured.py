"""The caller's own latency measurements, posted back over the ``events`` data channel.

The web page (and ``rejoinder call``) measures each turn's voice-to-voice latency from
the audio itself and sends ``{"type": "measured", "turn": n, "v2v_ms": x}``. Nothing the
caller sends is trusted: a message is accepted only if it is that shape exactly, ``x``
is a finite number of milliseconds within bounds, and turn ``n`` is one the caller
spoke and the agent answered with audio, measured once. Anything else is ignored: one
log line per call, then silence (a broken or hostile page must not fill the log).
"""

from __future__ import annotations

import json
import logging
import math

log = logging.getLogger(__name__)

Event = dict[str, object]

#: The largest latency accepted: a reply later than this is no reply the caller waited for.
MAX_V2V_MS = 60_000.0
_MAX_MESSAGE = 256  # characters; a measured message is ~50
_KEYS = frozenset({"type", "turn", "v2v_ms"})


class MeasuredTurns:
    """One call's gate for measured messages. :meth:`on_event` follows the server's
    events (which turns exist); :meth:`accept` turns a caller's message into a
    ``measured`` event, or None."""

    def __init__(self) -> None:
        self._asked: set[int] = set()     # turns with the caller's words ("user" event)
        self._answered: set[int] = set()  # ...and agent audio ("agent" event)
        self._measured: set[int] = set()
        self.ignored = 0

    def on_event(self, event: Event) -> None:
        kind, turn = event.get("type"), event.get("turn")
        if not isinstance(turn, int):
            return
        if kind == "user":
            self._asked.add(turn)
        elif kind == "agent" and turn in self._asked:
            self._answered.add(turn)

    def accept(self, message: object) -> Event | None:
        event = self._parse(message)
        if event is None:
            self.ignored += 1
            if self.ignored == 1:
                log.info("ignoring a malformed or unexpected message from the caller "
                         "(further ones are not logged)")
            return None
        return event

    def _parse(self, message: object) -> Event | None:
        if not isinstance(message, str) or len(message) > _MAX_MESSAGE:
            return None
        try:
            data = json.loads(message)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.keys() != _KEYS or data["type"] != "measured":
            return None
        turn, v2v = data["turn"], data["v2v_ms"]
        if (not isinstance(turn, int) or isinstance(turn, bool) or isinstance(v2v, bool)
                or not isinstance(v2v, int | float)):
            return None
        # A reply heard before the caller stopped, or absurdly late, is no measurement.
        if not (math.isfinite(v2v) and 0 < v2v <= MAX_V2V_MS):
            return None
        if turn not in self._answered or turn in self._measured:
            return None
        self._measured.add(turn)
        return {"type": "measured", "turn": turn, "v2v_ms": round(float(v2v), 1)}
