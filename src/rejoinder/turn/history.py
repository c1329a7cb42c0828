"""The chat history of a call: what each turn leaves in it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rejoinder.providers.base import ChatMessage

if TYPE_CHECKING:
    from rejoinder.turn.reply import Reply


def commit_turn(history: list[ChatMessage], reply: Reply, agent_text: str, *,
                interrupted: bool, cap: int) -> None:
    """Append the caller's words and what the agent said (``agent_text``: what the caller
    heard of it when ``interrupted``); keep at most ``cap`` messages."""
    if reply.user_text:
        history.append(ChatMessage("user", reply.user_text))
    if exchange := getattr(reply, "tool_exchange", None):  # a reply that called tools
        history.extend(exchange)
        if not interrupted:
            agent_text = reply.final_text()
    if agent_text:  # an interruption before the first word leaves nothing said
        history.append(ChatMessage("assistant", agent_text, interrupted=interrupted))
    if len(history) > cap:
        # Drop the oldest half at once rather than one message per turn: the prompt then
        # keeps the same prefix for many turns, so the LLM's prompt cache holds.
        cut = len(history) - cap // 2
        while cut < len(history) and history[cut].role != "user":
            cut += 1
        del history[:cut]
