"""Agent audio waiting to leave, pulled by the transport one 20 ms frame at a time.

The playout knows which reply (turn) and which clause every queued sample
belongs to, so that barge-in can flush it at once and tell exactly which words
the caller heard.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rejoinder.core.audio import OUT_FRAME_SAMPLES, PCM


@dataclass
class _Clause:
    text: str
    queued: int = 0     # samples pushed so far
    played: int = 0     # samples pulled by the transport
    complete: bool = False  # all of its audio has been pushed
    filler: bool = False    # a filler ("One moment."): spoken, but not part of the reply


@dataclass
class _Reply:
    clauses: list[_Clause] = field(default_factory=list)
    started: bool = False  # first frame pulled


class Playout:
    """A queue of agent audio at the output rate, labelled by turn and clause."""

    def __init__(self, frame_samples: int = OUT_FRAME_SAMPLES,
                 on_clause_start: Callable[[int, int, str], None] | None = None) -> None:
        self.frame_samples = frame_samples
        #: Called with (turn, clause index, clause text) when a clause's first frame is pulled.
        self.on_clause_start = on_clause_start
        #: Called whenever audio is queued (the transport may be waiting for it).
        self.on_push: Callable[[], None] | None = None
        self._chunks: deque[tuple[PCM, int, int]] = deque()  # (pcm, turn, clause index)
        self._offset = 0  # samples of the head chunk already pulled
        self._queued = 0
        self._replies: dict[int, _Reply] = {}
        self._holds: set[str] = set()  # while any is set, nothing plays (audio stays queued)

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
        self._offset += n
        self._queued -= n
        if self._offset >= len(self._chunks[0][0]):
            self._chunks.popleft()
            self._offset = 0

    def _mark(self, turn: int, clause: int, n: int) -> None:
        reply = self._replies.get(turn)
        if reply is None:
            return
        c = reply.clauses[clause]
        if c.played == 0 and self.on_clause_start is not None:
            self.on_clause_start(turn, clause, c.text)
        c.played += n
        reply.started = True

    # -- questions and barge-in ----------------------------------------------------
    @property
    def queued_samples(self) -> int:
        """Samples ready to play now (0 while held)."""
        return 0 if self._holds else self._queued

    def hold(self, reason: str) -> None:
        """Stop playing at the next frame, keeping the queue (a speculative reply not yet
        confirmed, or the caller making a sound that may be an interruption)."""
        self._holds.add(reason)

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

    def heard(self, turn: int) -> str:
        """The words of ``turn`` the caller has heard so far.

        Fully played clauses count whole; a clause cut midway counts the share of
        its words matching the share of its audio that was played. Fillers do not count.
        """
        reply = self._replies.get(turn)
        if reply is None:
            return ""
        words: list[str] = []
        for c in reply.clauses:
            if c.played == 0:
                break
            clause_words = [] if c.filler else c.text.split()
            if c.complete and c.played >= c.queued:
                words += clause_words
                continue
            share = c.played / max(c.queued, 1)
            words += clause_words[: int(len(clause_words) * share)]
            break
        return " ".join(words)

    def forget(self, turn: int) -> None:
        self._replies.pop(turn, None)
