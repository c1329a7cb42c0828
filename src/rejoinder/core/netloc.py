"""Host and origin strings as HTTP carries them, parsed strictly (no DNS, no I/O)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"Example.org:8080"`` -> ``("example.org", 8080)``; ``"[::1]"`` -> ``("::1", None)``;
    None when it is not a host[:port]."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
        rest = ":" + port
    elif ":" in value:  # an IPv6 address needs its brackets
        return None
    else:
        name, rest = value, ""
    if not name or not re.fullmatch(r"[a-z0-9._:-]+", name):
        return None
    if not rest:
        return name, None
    if not re.fullmatch(r":[0-9]{1,5}", rest) or not 0 < int(rest[1:]) < 65536:
        return None
    return name, int(rest[1:])


def split_origin(value: str) -> tuple[str, str, int] | None:
    """``"https://Example.org"`` -> ``("https", "example.org", 443)``; None when it is not
    an http(s) origin (``null``, a path, a query, credentials, another scheme)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[scheme]


def is_loopback(name: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False
