"""The gateway's view of its workers: their heartbeats, and which one takes the next call.

Pure bookkeeping over times the caller passes in, so tests drive it with exact values.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass
class Heartbeat:
    """What a worker publishes every ``bus.heartbeat_s``."""

    worker: str
    calls: int
    max_calls: int
    url: str  # the worker's own base URL (its media streams)
    pid: int = 0
    draining: bool = False

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Heartbeat:
        """ValueError for a message that is not a heartbeat."""
        try:
            body = json.loads(data)
            beat = cls(worker=str(body["worker"]), calls=int(body["calls"]),
                       max_calls=int(body["max_calls"]), url=str(body["url"]),
                       pid=int(body.get("pid", 0)), draining=bool(body.get("draining")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a heartbeat: {type(exc).__name__}") from None
        return beat


@dataclass
class WorkerState:
    beat: Heartbeat
    seen_at: float
    reserved: int = 0  # calls sent to it since its last heartbeat

    @property
    def calls(self) -> int:
        return self.beat.calls + self.reserved

    @property
    def room(self) -> int:
        return 0 if self.beat.draining else max(0, self.beat.max_calls - self.calls)


class LoadTable:
    """Workers by id. A worker not heard from for ``stale_s`` is out of rotation."""

    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self.workers: dict[str, WorkerState] = {}

    def heard(self, beat: Heartbeat, now: float) -> None:
        self.workers[beat.worker] = WorkerState(beat, now)

    def live(self, now: float) -> list[WorkerState]:
        """The workers in rotation (heard within ``stale_s``); the others are forgotten."""
        for worker in [w for w, s in self.workers.items() if now - s.seen_at > self.stale_s]:
            del self.workers[worker]
        return list(self.workers.values())

    def candidates(self, now: float) -> list[WorkerState]:
        """Workers with room, the least loaded (by share of its capacity) first."""
        ready = [s for s in self.live(now) if s.room > 0]
        return sorted(ready, key=lambda s: (s.calls / s.beat.max_calls, s.calls, s.beat.worker))

    def reserve(self, worker: str) -> None:
        """A call was sent to ``worker``: count it until its next heartbeat says so."""
        if worker in self.workers:
            self.workers[worker].reserved += 1

    def full(self, worker: str) -> None:
        """``worker`` refused for lack of room: none until its next heartbeat."""
        if worker in self.workers:
            state = self.workers[worker]
            state.reserved = max(state.reserved, state.beat.max_calls - state.beat.calls)

    def totals(self, now: float) -> tuple[int, int]:
        live = self.live(now)
        return sum(s.calls for s in live), sum(s.beat.max_calls for s in live)
