"""The read-ahead: the caller's words so far, given to the LLM while they still speak."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING

from rejoinder.core.errors import ProviderError
from rejoinder.core.redact import read_ahead_text
from rejoinder.providers.base import ChatMessage
from rejoinder.turn.policy import Heard, words_unfinished
from rejoinder.turn.tools import prefetch_from_words

if TYPE_CHECKING:
    from rejoinder.turn.engine import Conversation

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[object, object, None], str], asyncio.Task[None]]


class ReadAhead:
    """While the caller speaks, give the LLM their words so far (``prefill``): the reply's
    prompt will start the same, so a model with a prompt cache has read most of it by the
    time the turn ends. One at a time, each time the words change. Not after the caller
    stops: then the final Whisper pass and smart-turn hold the cores, and a read-ahead of a
    partial that lands meanwhile took 450-590 ms instead of ~80 and delayed the reply's own
    request (librivox, 2 runs)."""

    def __init__(self, conv: Conversation, spawn: Spawn) -> None:
        self.conv = conv
        self._spawn = spawn
        self.text = ""  # the caller's words last read ahead into the LLM
        self._task: asyncio.Task[None] | None = None

    def update(self) -> None:
        """The caller is speaking: read their words ahead if they changed."""
        conv = self.conv
        if not conv.opts.prefill or (self._task is not None and not self._task.done()):
            return
        text = conv.stt.partial()
        if conv.stack.llm.redact:
            # Nothing of a number, address or spelled word still being said: only the
            # redacted words before it, less the last two (core.redact.read_ahead_text).
            text = read_ahead_text(text)
        if not text or text == self.text:
            return
        self.text = text
        messages = [conv.system, *conv.history, ChatMessage("user", text)]
        box = conv.stack.tools
        if box and box.prefetch and any(not t.side_effects for t in box.tools.values()):
            # The same prompt, asked for the tools it would call: it reads ahead as well.
            self._task = self._spawn(prefetch_from_words(conv, box, messages), "prefetch")
            return
        self._task = self._spawn(self._prefill(messages), "prefill")

    def cancel(self) -> None:
        """A reply starts: its own request comes first."""
        if self._task is not None:
            self._task.cancel()

    async def judge(self, text: str) -> bool:
        """The words check for a speculative transcript (``policy.words_unfinished``); for
        the fitted signal the policy also hears the LLM's P of the message ending there."""
        conv = self.conv
        if not conv.opts.hold_unfinished:
            return False
        known: dict[str, float | None] = {}

        async def end_p(words: str) -> float | None:
            if words not in known:
                known[words] = await self._end_p(words)
            return known[words]

        verdict = await words_unfinished(conv.opts, text, punctuated=conv.stack.stt.punctuates,
                                         end_p=end_p)
        if conv.turn.weights is not None:
            conv.turn.hear(Heard(text, verdict, await end_p(text) if text else None))
        return verdict

    async def _end_p(self, text: str) -> float | None:
        """The LLM's P that the caller's message ends with ``text`` (None: unknown)."""
        conv = self.conv
        messages = [conv.system, *conv.history, ChatMessage("user", text)]
        try:
            return await conv.stack.llm.turn_end_p(messages)
        except ProviderError as exc:  # no answer: the other signals decide
            log.debug("turn end from the LLM failed: %s", exc)
            return None

    async def _prefill(self, messages: list[ChatMessage]) -> None:
        try:
            await self.conv.stack.llm.prefill(messages)
        except ProviderError as exc:  # only a lost head start
            log.debug("prefill failed: %s", exc)
