"""A remote guardrail: an OpenAI-compatible moderation service.

    POST {base_url}/moderations  {"model": ..., "input": "<text>"}
    -> {"results": [{"flagged": true, "categories": {"violence": true, ...}}]}

A flagged clause is blocked (``moderation:<category>``, the first category set, or
``moderation:flagged``); a flagged caller turn is flagged. Every request has
``timeout_s``; a service that fails or is late is ``moderation_unavailable``: flagged
(``fail = "open"``, the clause is spoken) or blocked (``"closed"``). The text goes to the
service as it is: run your own, or one you trust with what callers and the agent say.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Any

import aiohttp

from rejoinder.guardrails.base import Action, Finding, Guardrail
from rejoinder.providers.remote._http import HTTPClient

log = logging.getLogger(__name__)

_CATEGORY = re.compile(r"[^a-z0-9_]+")


class ModerationGuardrail(Guardrail):
    name = "moderation"
    inline = False  # a network round trip: off the critical path where it can be

    def __init__(self, base_url: str, *, model: str = "omni-moderation-latest",
                 api_key: str = "", timeout_s: float = 1.0, fail: str = "open",
                 headers: Mapping[str, str] | None = None) -> None:
        self.url = base_url.rstrip("/") + "/moderations"
        self.model = model
        self.timeout_s = timeout_s
        self.fail: Action = "blocked" if fail == "closed" else "flagged"
        self.failures = 0  # requests that failed or were late, in total
        self._http = HTTPClient(api_key, headers)

    async def check_input(self, text: str) -> list[Finding]:
        return [Finding("flagged", f.rule) for f in await self._moderate(text)]

    async def check_output(self, text: str) -> list[Finding]:
        return await self._moderate(text)

    async def close(self) -> None:
        await self._http.close()

    async def _moderate(self, text: str) -> list[Finding]:
        body = {"model": self.model, "input": text}
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._http.session().post(self.url, json=body) as resp:
                    if resp.status != 200:
                        raise _Failed(f"HTTP {resp.status}")
                    answer = await resp.json(content_type=None)
            return _findings(answer)
        except (TimeoutError, aiohttp.ClientError, ValueError, _Failed) as exc:
            self.failures += 1
            # The reason only: never the text, which is the caller's or the agent's words.
            log.warning("moderation at %s failed (%s): the clause is %s", self.url,
                        type(exc).__name__ if not isinstance(exc, _Failed) else exc,
                        "spoken" if self.fail == "flagged" else "blocked")
            return [Finding(self.fail, "moderation_unavailable")]


class _Failed(Exception):
    pass


def _findings(answer: Any) -> list[Finding]:
    try:
        result = answer["results"][0]
        flagged = result["flagged"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("not a moderation answer") from None
    if flagged is not True:
        return []
    categories = result.get("categories") or {}
    names = [name for name, hit in categories.items() if hit is True] \
        if isinstance(categories, dict) else []
    name = _CATEGORY.sub("_", str(names[0]).lower())[:40] if names else "flagged"
    return [Finding("blocked", f"moderation:{name}")]
