"""HTTP webhook tools (``[[agent.webhook_tools]]``): the arguments are POSTed as JSON to the
URL, and the JSON answer (or its text) is the result. A status other than 2xx is a failed
call; the answer's text never reaches a log (it may hold the caller's data)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from rejoinder.core.errors import ConfigError
from rejoinder.tools.base import Tool

if TYPE_CHECKING:
    from rejoinder.config import WebhookToolOptions


class WebhookError(Exception):
    """A webhook answered with an error status, or could not be reached."""


class Webhooks:
    """One HTTP session for every webhook tool of a server; ``close()`` ends it."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0))
        return self._session

    def tool(self, options: WebhookToolOptions) -> Tool:
        where = f"agent.webhook_tools.{options.name or '?'}"
        if not options.url.startswith(("http://", "https://")):
            raise ConfigError(where, "url must start with http:// or https://")
        if not options.description.strip():
            raise ConfigError(where, "needs a description (the LLM reads it)")
        url, headers = options.url, dict(options.headers)

        async def invoke(arguments: dict[str, Any]) -> Any:
            try:
                async with self._client().post(url, json=arguments, headers=headers) as resp:
                    if not 200 <= resp.status < 300:
                        raise WebhookError(f"HTTP {resp.status}")
                    if resp.content_type == "application/json":
                        return await resp.json()
                    return await resp.text()
            except aiohttp.ClientError as exc:
                raise WebhookError(type(exc).__name__) from exc

        try:
            return Tool(name=options.name, description=options.description.strip(),
                        parameters=dict(options.parameters), invoke=invoke,
                        side_effects=options.side_effects, timeout_s=options.timeout_s)
        except ConfigError as exc:
            raise ConfigError(where, exc.problem) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
