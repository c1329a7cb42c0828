"""What the remote providers share: one lazily created aiohttp session with fixed headers,
and the translation of HTTP failures into the project's errors."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from rejoinder.core.errors import ProviderError, ProviderStreamError, ProviderUnavailable

#: Statuses that say "not now" (overloaded, rate-limited, a gateway without its backend).
UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


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


async def status_error(name: str, resp: aiohttp.ClientResponse) -> ProviderError:
    """The error for a response that is not 200: :class:`ProviderUnavailable` for the
    statuses that mean "not now", :class:`ProviderError` for the rest."""
    cls = ProviderUnavailable if resp.status in UNAVAILABLE_STATUSES else ProviderError
    return cls(name, await error_detail(resp))


def connection_error(name: str, url: str, exc: aiohttp.ClientError) -> ProviderError:
    """A failed request: :class:`ProviderUnavailable` if the service could not be reached
    at all (refused, no route, name not resolved), else the stream broke midway."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ProviderUnavailable(name, f"connection to {url} failed: {exc!r}")
    return ProviderStreamError(name, f"connection to {url} failed: {exc!r}")
