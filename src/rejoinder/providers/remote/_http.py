"""What the remote providers share: one lazily created aiohttp session with fixed headers."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp


class HTTPClient:
    """One connection pool per provider, created on first use (inside the running loop)."""

    def __init__(self, api_key: str = "", headers: Mapping[str, str] | None = None,
                 connect_timeout_s: float = 5.0) -> None:
        self.headers = dict(headers or {})
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s))
        return self._session

    async def close(self) -> None:
        """Idempotent."""
        if self._session is not None:
            await self._session.close()
            self._session = None


async def error_detail(resp: aiohttp.ClientResponse) -> str:
    """``HTTP 503 from URL: <first 300 characters of the body>``."""
    try:
        body = (await resp.text(errors="replace"))[:300]
    except aiohttp.ClientError:
        body = "(no body)"
    return f"HTTP {resp.status} from {resp.url}: {body}"
