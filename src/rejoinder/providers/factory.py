"""Build the provider stack a server runs with, from configuration."""

from __future__ import annotations

from rejoinder.config import Config
from rejoinder.providers.base import Stack


def build_stack(config: Config, kind: str = "local") -> Stack:
    """``kind``: "local" (embedded offline models) or "fake" (no models, fixed latency)."""
    if kind == "fake":
        from rejoinder.testing.fakes import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack

        stack = fake_stack(
            stt=FakeSTT(["(fake transcript)"], Latency(first_s=0.15)),
            llm=FakeLLM(["This is a fake reply from the test stack."],
                        Latency(first_s=0.25, per_item_s=0.02)),
            tts=FakeTTS(Latency(first_s=0.1), rtf=0.1, sample_rate=24_000),
        )
    elif kind == "local":
        from rejoinder.providers.local import load_local_stack
        from rejoinder.providers.local.smollm import SmolLMOptions

        stack = load_local_stack(llm=SmolLMOptions(
            max_tokens=config.llm.max_tokens, temperature=config.llm.temperature))
    else:
        raise ValueError(f"unknown stack {kind!r}")
    if config.llm.provider == "openai":
        from rejoinder.providers.openai.llm import OpenAILLM

        c = config.llm
        stack.llm = OpenAILLM(c.base_url, c.model, c.api_key, temperature=c.temperature,
                              max_tokens=c.max_tokens, first_token_timeout_s=c.timeout_s)
    return stack
