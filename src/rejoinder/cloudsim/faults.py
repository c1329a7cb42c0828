"""Per-request failure draws, deterministic for a given seed and service."""

from __future__ import annotations

import random
from typing import Literal

from rejoinder.cloudsim.profile import ServiceProfile

Fault = Literal["timeout", "drop"]


class FaultDice:
    """Decides, request by request, whether a service hangs, drops the stream, or answers.

    Each service rolls its own sequence (seeded with ``"{seed}:{service}"``), so the outcome of
    the n-th LLM request does not depend on how many STT requests came before it.
    """

    def __init__(self, profile: ServiceProfile, seed: int) -> None:
        self.timeout_rate = profile.timeout_rate
        self.drop_rate = profile.drop_rate
        self._rng = random.Random(f"{seed}:{profile.section}")

    def roll(self) -> tuple[Fault | None, int]:
        """The fault for the next request (None: answer normally), and a seed for its jitter."""
        draw = self._rng.random()
        jitter_seed = self._rng.getrandbits(32)
        if draw < self.timeout_rate:
            return "timeout", jitter_seed
        if draw < self.timeout_rate + self.drop_rate:
            return "drop", jitter_seed
        return None, jitter_seed
