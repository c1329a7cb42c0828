"""The transport contract: how a caller's audio reaches a call, and the agent's leaves.

    caller ─► transport ─► frames (16 kHz mono PCM16, 20 ms) ─► Call ─► Conversation
    caller ◄─ transport ◄─ Playout (at the transport's rate, paced 20 ms a frame) ◄─ Reply

A transport is one caller's connection: WebRTC (:mod:`rejoinder.transports.webrtc`) or a
Twilio Media Stream (:mod:`rejoinder.transports.twilio`). The turn engine never sees it;
it sees the :class:`~rejoinder.turn.playout.Playout` the transport drains:

- **frames in**: the transport hands the call its caller's frames once media starts
  (:meth:`CallSide.on_media`), and reports each one as it arrives (:meth:`CallSide.on_frame`,
  the call's media watchdog);
- **audio out**: :meth:`Transport.start` gives it a playout made at :attr:`Transport.rate`;
  the transport pulls one frame every 20 ms on its clock while there is audio;
- **clear**: the playout's ``on_flush`` (barge-in) makes it drop what the far end buffers;
- **heard so far**: a transport whose far end buffers audio confirms what was played
  (``Playout(confirmed=True)`` and :meth:`Playout.confirm`: Twilio's echoed marks);
  otherwise a pulled and sent sample counts as heard (WebRTC);
- **events out**: :meth:`Transport.send_event` (WebRTC's data channel; Twilio has none,
  so its events go only to the call's observers), and events from the caller back in
  (:meth:`CallSide.on_caller_message`, :meth:`CallSide.on_caller_event`);
- **close** with a deadline, idempotent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from rejoinder.core.audio import PCM
from rejoinder.turn.playout import Playout


class CallSide(Protocol):
    """What a transport tells its call (implemented by :class:`rejoinder.server.call.Call`)."""

    def on_connected(self) -> None:
        """The caller is connected: from now on its audio must keep coming."""

    def on_media(self, frames: AsyncIterator[PCM]) -> None:
        """The caller's audio starts: 16 kHz mono PCM16 frames until the caller leaves."""

    def on_frame(self) -> None:
        """A frame of the caller's audio arrived (the caller is still there)."""

    def on_caller_message(self, message: object) -> None:
        """A message on the caller's events channel (WebRTC's data channel)."""

    def on_caller_event(self, event: dict[str, object]) -> None:
        """An event the transport itself reports from the caller (a DTMF key)."""

    def on_lost(self) -> None:
        """The connection failed or closed: the call ends."""


class Transport(Protocol):
    """One caller's connection, as a :class:`~rejoinder.server.call.Call` uses it."""

    #: The call record's transport: "webrtc" or "twilio".
    kind: str
    #: Sample rate of the agent's audio on this transport (the playout's).
    rate: int
    #: The far end confirms what it played (the playout is made with ``confirmed=True``).
    confirms_heard: bool

    def start(self, call: CallSide, playout: Playout) -> None:
        """Bind to the call and start draining ``playout`` once the caller is there."""

    def send_event(self, message: str) -> None:
        """A JSON event for the caller; dropped where the transport has no event channel."""

    @property
    def failed(self) -> bool:
        """The connection failed (rather than ended): the call's outcome."""

    async def close(self, deadline_s: float = 2.0) -> None:
        """Stop sending and receiving and release the connection, within ``deadline_s``
        (logging, not raising, when it hangs). Idempotent."""
