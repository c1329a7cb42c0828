"""Agent audio waiting to leave, pulled by the transport one 20 ms frame at a time.

The playout knows which reply (turn) and which clause every queued sample
belongs to, so that barge-in can flush it at once and tell exactly which words
the caller heard. It runs at the transport's own rate (48 kHz for WebRTC, 8 kHz for a
phone line). A transport whose far end buffers audio (Twilio) counts as heard only what
the far end confirmed (:meth:`Playout.confirm`); otherwise a pulled sample is heard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rejoinder.core.audio import FRAME_MS, OUT_RATE, PCM

REWIND_MAX_S = 2.0  # pulled audio kept for :meth:`Playout.rewind`


@dataclass
class _Clause:
    text: str
    queued: int = 0     # samples pushed so far
    played: int = 0     # samples pulled by the transport
    first: int = 0      # the playout's pulled-sample count at its first sample
    complete: bool = False  # all of its audio has been pushed
    filler: bool = False    # a filler ("One moment."): spoken, but not part of the reply
    announced: bool = False  # on_clause_start was called for it


@dataclass
class _Reply:
    clauses: list[_Clause] = field(default_factory=list)
    started: bool = False  # first frame pulled


class Playout:
    """A queue of agent audio at the output rate, labelled by turn and clause."""

    def __init__(self, rate: int = OUT_RATE,
                 on_clause_start: Callable[[int, int, str], None] | None = None, *,
                 confirmed: bool = False) -> None:
        self.rate = rate
        self.frame_samples = rate * FRAME_MS // 1000
        #: Called with (turn, clause index, clause text) when a clause's first frame is pulled.
        self.on_clause_start = on_clause_start
        #: Called whenever audio is queued (the transport may be waiting for it).
        self.on_push: Callable[[], None] | None = None
        self._chunks: deque[tuple[PCM, int, int]] = deque()  # (pcm, turn, clause index)
        self._offset = 0  # samples of the head chunk already pulled
        self._queued = 0
        self._replies: dict[int, _Reply] = {}
        self._holds: set[str] = set()  # while any is set, nothing plays (audio stays queued)
        #: Called by :meth:`flush` (a transport drops the audio its far end buffers).
        self.on_flush: Callable[[], None] | None = None
        #: Called when a hold begins (a transport whose far end buffers audio drops it there
        #: and gives back what was not played with :meth:`rewind`).
        self.on_hold: Callable[[], None] | None = None
        self._recent: deque[tuple[PCM, int, int]] = deque()  # pulled pieces, for rewind
        self._recent_len = 0
        self.pulled = 0  # samples pulled so far, all turns
        # confirmed=True: heard is what the transport confirmed (None: what was pulled).
        self._confirmed: int | None = 0 if confirmed else None
        self.ended_clause = False  # the last pull played the end of a complete clause

    # -- producer side -------------------------------------------------------------
    def begin_clause(self, turn: int, text: str, *, filler: bool = False) -> int:
        reply = self._replies.setdefault(turn, _Reply())
        reply.clauses.append(_Clause(text, filler=filler))
        return len(reply.clauses) - 1

    def push(self, turn: int, clause: int, pcm: PCM) -> None:
        if pcm.size == 0 or turn not in self._replies:
            return
        self._replies[turn].clauses[clause].queued += len(pcm)
        self._chunks.append((pcm, turn, clause))
        self._queued += len(pcm)
        if self.on_push is not None:
            self.on_push()

    def end_clause(self, turn: int, clause: int) -> None:
        if turn in self._replies:
            self._replies[turn].clauses[clause].complete = True

    # -- transport side ------------------------------------------------------------
    def pull(self) -> PCM | None:
        """The next frame of agent audio, or None when there is nothing to play."""
        self.ended_clause = False
        if not self._chunks or self._holds:
            return None
        n = self.frame_samples
        head, turn, clause = self._chunks[0]
        if len(head) - self._offset >= n:  # common case: one slice, no copy
            frame = head[self._offset:self._offset + n]
            self._advance(n)
            self._mark(turn, clause, n)
            return frame
        frame = np.zeros(n, dtype=np.int16)
        filled = 0
        while filled < n and self._chunks:
            head, turn, clause = self._chunks[0]
            take = min(n - filled, len(head) - self._offset)
            frame[filled:filled + take] = head[self._offset:self._offset + take]
            filled += take
            self._advance(take)
            self._mark(turn, clause, take)
        return frame

    def _advance(self, n: int) -> None:
        head, turn, clause = self._chunks[0]
        self._recent.append((head[self._offset:self._offset + n], turn, clause))
        self._recent_len += n
        while self._recent_len - len(self._recent[0][0]) >= REWIND_MAX_S * self.rate:
            self._recent_len -= len(self._recent.popleft()[0])
        self._offset += n
        self._queued -= n
        self.pulled += n
        if self._offset >= len(self._chunks[0][0]):
            self._chunks.popleft()
            self._offset = 0

    def _mark(self, turn: int, clause: int, n: int) -> None:
        reply = self._replies.get(turn)
        if reply is None:
            return
        c = reply.clauses[clause]
        if c.played == 0:
            c.first = self.pulled - n
            if self.on_clause_start is not None and not c.announced:
                self.on_clause_start(turn, clause, c.text)
            c.announced = True
        c.played += n
        reply.started = True
        self.ended_clause = self.ended_clause or (c.complete and c.played >= c.queued)

    # -- questions and barge-in ----------------------------------------------------
    @property
    def queued_samples(self) -> int:
        """Samples ready to play now (0 while held)."""
        return 0 if self._holds else self._queued

    def hold(self, reason: str) -> None:
        """Stop playing at the next frame, keeping the queue (a speculative reply not yet
        confirmed, or the caller making a sound that may be an interruption)."""
        was_held = bool(self._holds)
        self._holds.add(reason)
        if not was_held and self.on_hold is not None:
            self.on_hold()

    def release(self, reason: str) -> None:
        """Undo :meth:`hold` for ``reason``; playing resumes where it stopped."""
        self._holds.discard(reason)
        if not self._holds and self._queued and self.on_push is not None:
            self.on_push()

    def held(self, reason: str) -> bool:
        return reason in self._holds

    def is_playing(self, turn: int) -> bool:
        return any(t == turn for _, t, _ in self._chunks)

    def started(self, turn: int) -> bool:
        reply = self._replies.get(turn)
        return reply is not None and reply.started

    def flush(self) -> None:
        """Drop every queued sample now (barge-in)."""
        self._chunks.clear()
        self._offset = 0
        self._queued = 0
        self._recent.clear()
        self._recent_len = 0
        if self.on_flush is not None:
            self.on_flush()

    def rewind(self, samples: int) -> int:
        """Put the last ``samples`` pulled (at most :data:`REWIND_MAX_S` of them, none from
        before a flush) back at the head of the queue: the far end dropped them unplayed.
        Returns how many were put back."""
        if self._offset:  # the head chunk starts where the next pull would
            head, turn, clause = self._chunks[0]
            self._chunks[0] = (head[self._offset:], turn, clause)
            self._offset = 0
        back = 0
        while back < samples and self._recent:
            pcm, turn, clause = self._recent.pop()
            if back + len(pcm) > samples:  # only the end of this piece
                keep = len(pcm) - (samples - back)
                self._recent.append((pcm[:keep], turn, clause))
                pcm = pcm[keep:]
            self._recent_len -= len(pcm)
            self._chunks.appendleft((pcm, turn, clause))
            back += len(pcm)
            reply = self._replies.get(turn)
            if reply is not None:
                reply.clauses[clause].played -= len(pcm)
        self._queued += back
        self.pulled -= back
        if self._confirmed is not None:
            self._confirmed = min(self._confirmed, self.pulled)
        return back

    def confirm(self, pulled: int) -> None:
        """The far end has played every sample pulled before ``pulled`` (a count of
        :attr:`pulled`); only for a playout made with ``confirmed=True``."""
        if self._confirmed is not None:
            self._confirmed = max(self._confirmed, min(pulled, self.pulled))

    def _heard_samples(self, c: _Clause) -> int:
        if self._confirmed is None:
            return c.played
        return max(0, min(c.played, self._confirmed - c.first))

    def heard(self, turn: int) -> str:
        """The words of ``turn`` the caller has heard so far.

        Fully played clauses count whole; a clause cut midway counts the share of
        its words matching the share of its audio that was played (confirmed, on a
        transport that confirms). Fillers do not count.
        """
        reply = self._replies.get(turn)
        if reply is None:
            return ""
        words: list[str] = []
        for c in reply.clauses:
            heard = self._heard_samples(c)
            if heard == 0:
                break
            clause_words = [] if c.filler else c.text.split()
            if c.complete and heard >= c.queued:
                words += clause_words
                continue
            share = heard / max(c.queued, 1)
            words += clause_words[: int(len(clause_words) * share)]
            break
        return " ".join(words)

    def forget(self, turn: int) -> None:
        self._replies.pop(turn, None)
