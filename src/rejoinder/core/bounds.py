"""Range checks for the numeric fields of an options dataclass, naming the field.

    check_numbers(self, "llm", {"temperature": (0.0, 2.0), "max_tokens": (1, 100_000)})

NaN and infinity pass or fail every comparison the wrong way (``nan < 0`` is false), so a
range check alone lets them through or blames the wrong field: every float field of the
dataclass must be finite first, whether or not it has a range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from rejoinder.core.errors import ConfigError


def check_numbers(options: Any, section: str,
                  ranges: Mapping[str, tuple[float, float]]) -> None:
    """Every float field of ``options`` is finite, and each field named in ``ranges``
    lies between its two bounds (inclusive). Raises :class:`ConfigError` naming the field
    as ``section.field``."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{f.name}", f"must be a finite number, not {value}")
    for name, (low, high) in ranges.items():
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{section}.{name}", f"must be a number, not {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{section}.{name}", f"must be between {low:g} and {high:g}")
