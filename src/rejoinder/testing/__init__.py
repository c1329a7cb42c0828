"""Public test helpers: fake providers with latency profiles, and virtual time.

The same fakes serve unit tests (on virtual time, exact) and benchmarks (on
real time, to measure orchestration overhead against known provider latency).
"""

from rejoinder.testing.fakes import (
    FakeLLM,
    FakeSTT,
    FakeTTS,
    FakeTurnModel,
    FakeVAD,
    Latency,
    fake_stack,
)
from rejoinder.testing.virtual_time import VirtualTimeLoop, run_virtual

__all__ = [
    "FakeLLM", "FakeSTT", "FakeTTS", "FakeTurnModel", "FakeVAD", "Latency", "VirtualTimeLoop",
    "fake_stack", "run_virtual",
]
