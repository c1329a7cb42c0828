"""The embedded model calls the booking agent's tools (SmolLM2-135M on llama.cpp)."""

from __future__ import annotations

import pytest

from rejoinder.agents.booking.tools import TOOLS
from rejoinder.providers.base import ChatMessage
from rejoinder.providers.local.smollm import SmolLM
from rejoinder.tools.base import ToolCall

pytestmark = pytest.mark.slow

SYSTEM = ChatMessage("system", "You are the receptionist of a hair salon on the phone."
                               " Answer in one short sentence.")


async def test_smollm_books_a_haircut_through_the_tool() -> None:
    llm = SmolLM()
    llm.first_item_timeout_s = 60.0  # a shared CI machine; the figure is in docs/benchmarks.md
    try:
        items = [item async for item in llm.stream(
            [SYSTEM, ChatMessage("user", "I'd like to book a haircut tomorrow at 3.")], TOOLS)]
    finally:
        llm.close()
    calls = [i for i in items if isinstance(i, ToolCall)]
    assert len(calls) == 1, items
    assert calls[0].name == "book"
    args = calls[0].args()  # parses: a JSON object
    assert args["day"] == "tomorrow" and args["time"] == "15:00", args
    assert "haircut" in args["service"].lower(), args


async def test_smollm_answers_chit_chat_without_a_tool() -> None:
    llm = SmolLM()
    llm.first_item_timeout_s = 60.0
    try:
        stream = llm.stream([SYSTEM, ChatMessage("user", "Hi, how are you today?")], TOOLS)
        first = await anext(stream)
        await stream.aclose()
    finally:
        llm.close()
    assert isinstance(first, str) and first
