"""Build the provider stack a server runs with, from configuration."""

from __future__ import annotations

from rejoinder.config import Config
from rejoinder.providers.base import LLM, Stack


def build_stack(config: Config, kind: str = "local") -> Stack:
    """``kind``: "local" (embedded offline models) or "fake" (no models, fixed latency).

    With ``llm.provider = "openai"`` the LLM is the configured server in either case.
    """
    remote = _openai_llm(config) if config.llm.provider == "openai" else None
    if kind == "fake":
        from rejoinder.testing.fakes import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack

        return fake_stack(
            stt=FakeSTT(["(fake transcript)"], Latency(first_s=0.15)),
            llm=remote or FakeLLM(["This is a fake reply from the test stack."],
                                  Latency(first_s=0.25, per_item_s=0.02)),
            tts=FakeTTS(Latency(first_s=0.1), rtf=0.1, sample_rate=24_000),
        )
    if kind == "local":
        from rejoinder.providers.local import load_local_stack
        from rejoinder.providers.local.smollm import SmolLMOptions

        return load_local_stack(llm=remote or SmolLMOptions(
            max_tokens=config.llm.max_tokens, temperature=config.llm.temperature))
    raise ValueError(f"unknown stack {kind!r}")


def _openai_llm(config: Config) -> LLM:
    from rejoinder.providers.openai.llm import OpenAILLM

    c = config.llm
    return OpenAILLM(c.base_url, c.model, c.api_key, temperature=c.temperature,
                     max_tokens=c.max_tokens, first_token_timeout_s=c.timeout_s)
