"""Arguments read from the caller's words by rule, for the fields whose kind is plain to see.

A field is typed by its JSON schema and its name: an ``enum`` (one of its values said), a
clock time (``time`` in the name or ``"format": "time"``), a day (``day``/``date`` in the name
or ``"format": "date"``), a booking reference or code (``reference``, ``code``, ``_id``...), a
person's name (``name``, ``full_name``...). Those are the fields a 135M model gets wrong
most (it writes "2023-01-01T00:00:00Z" for "tomorrow at 3", or copies the field's
description); the rules read them in microseconds and never invent one the caller did not
say. Fields of any other kind are left to the model.

Clock times follow business hours: "at 3" with no "a.m." is 15:00 (an hour from 1 to 7 is
the afternoon), because that is what a caller of a shop or a clinic means.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBERS = {w: i for i, w in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve"))}

# Capitals, then digits and letters in groups ("BK-26DEC06-003", "BK 20261206 003"); a match
# with fewer than six characters or three digits ("at 3") is not one.
_REFERENCE = re.compile(r"\b[A-Z]{1,4}[- ]?\d[\dA-Za-z]*(?:[- ](?=[A-Za-z]*\d)[\dA-Za-z]+)*\b")
_PHONE = re.compile(r"\+?\d[\d ().-]{5,}\d")
_CLOCK = re.compile(
    r"\b(?:at|around|for|by|from|about|to|until)?\s*"
    r"(?P<h>\d{1,2}(?!\d)|(?:" + "|".join(_NUMBERS) + r")\b)(?:[:.](?P<m>\d{2}))?"
    r"(?P<tail>\s*(?:a\.?\s?m\b\.?|p\.?\s?m\b\.?|o'clock|in the (?:morning|afternoon|evening)"
    r"|tonight))?", re.I)
_NAME = re.compile(
    r"(?i:my name is|my name's|name is|name's|this is|it's under|it is under|under the name"
    r"|booked under|under)\s+(?i:the name\s+)?(?P<n>[A-Z][a-z'\-]+(?:\s+[A-Z][a-z'\-]+){0,2})")
_NOT_NAMES = {"I", "It", "The", "This", "That", "Monday", "Tuesday", "Wednesday", "Thursday",
              "Friday", "Saturday", "Sunday", "Today", "Tomorrow"}


def kind_of(name: str, schema: Mapping[str, Any]) -> str | None:
    """The kind of field this is, for the rules; None: the model's to write."""
    n = name.lower()
    fmt = str(schema.get("format", ""))
    if isinstance(schema.get("enum"), list) and all(isinstance(v, str) for v in schema["enum"]):
        return "enum"
    if schema.get("type") not in (None, "string"):
        return None
    if fmt == "time" or n == "time" or n.endswith("_time") or n.startswith("time_"):
        return "time"
    if fmt == "date" or n in ("day", "date") or n.endswith(("_day", "_date")):
        return "day"
    if (n in ("reference", "ref", "code", "booking_id", "confirmation")
            or n.endswith(("_reference", "_ref", "_code"))):
        return "reference"
    if n in ("name", "full_name", "customer_name", "caller_name", "client_name"):
        return "name"
    if n in ("phone", "phone_number", "telephone", "mobile") or n.endswith("_phone"):
        return "phone"
    return None


def fill(properties: Mapping[str, Any], text: str, today: dt.date | None = None,
         known: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """``(arguments read by rule, names of the fields left to the model)``.

    ``known``: the references the conversation already holds (a tool gave them), oldest
    first; a reference field takes the one the caller read out, however the recogniser
    wrote it, or the only one there is when the caller names none ("cancel my booking")."""
    found: dict[str, Any] = {}
    rest: list[str] = []
    refs = [m.group(0) for m in _REFERENCE.finditer(text) if _is_reference(m.group(0))]
    plain = text
    for ref in refs:  # reference digits are not clock times
        plain = plain.replace(ref, " ")
    phones = [m.group(0) for m in _PHONE.finditer(plain)
              if sum(c.isdigit() for c in m.group(0)) >= 7]
    for phone in phones:
        plain = plain.replace(phone, " ")
    for name, schema in properties.items():
        spec = schema if isinstance(schema, Mapping) else {}
        kind = kind_of(name, spec)
        value: Any = None
        if kind is None:
            rest.append(name)
            continue
        if kind == "enum":
            value = _enum(spec["enum"], plain)
        elif kind == "time":
            value = clock(plain)
        elif kind == "day":
            value = day(plain, today if spec.get("format") == "date" else None)
        elif kind == "reference":
            value = reference(text, refs, known)
        elif kind == "phone":
            value = phones[0] if phones else None
        elif kind == "name":
            m = _NAME.search(plain)
            if m is not None:
                words = [w for w in m.group("n").split() if w not in _NOT_NAMES]
                value = " ".join(words) or None
        if value is not None:
            found[name] = value
    return found, rest


def known_references(texts: Iterable[str]) -> list[str]:
    """The references written in ``texts`` (tool results, the agent's words), each once,
    in the order they last appear."""
    out: list[str] = []
    for text in texts:
        for m in _REFERENCE.finditer(text):
            if _is_reference(m.group(0)):
                ref = m.group(0)
                out = [r for r in out if r != ref] + [ref]
    return out


def reference(text: str, written: Sequence[str], known: Sequence[str]) -> str | None:
    """The reference the caller means: a known one they read out (as written, or as a
    recogniser wrote it read aloud: "BK26 December 06, 0-0-1", "BK26DC 060 001"), else one
    written in their words, else the only one the conversation holds."""
    for ref in written:
        for k in known:
            if _squash(k) == _squash(ref):
                return k
    for ref in written:  # well formed, like a known one, yet another: another booking
        if any(_shape(ref) == _shape(k) for k in known):
            return ref
    said = _squash(text)
    if known and sum(c.isdigit() for c in said) >= 3:
        scored = sorted((_distance_within(_squash(k), said), i) for i, k in enumerate(known))
        best, i = scored[0]
        close = best <= max(2, len(_squash(known[i])) // 4)
        if close and (len(scored) == 1 or scored[1][0] > best):
            return known[i]
    if written:
        return written[0]
    return known[-1] if len(known) == 1 else None


_SPOKEN_DIGITS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                  "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "october", "november", "december")
_SEPARATORS = {"dash", "hyphen", "slash", "minus", "and"}


def _squash(text: str) -> str:
    """Letters and digits only, upper case, digits and months said as words written short
    ("two six december" is "26DEC"), the words for separators dropped."""
    out = []
    for w in re.findall(r"[A-Za-z]+|\d+", text):
        low = w.lower()
        if low in _SEPARATORS:
            continue
        if low in _MONTH_NAMES:
            w = low[:3]
        out.append(_SPOKEN_DIGITS.get(low, w))
    return "".join(out).upper()


def _shape(ref: str) -> str:
    return re.sub(r"[A-Z]", "A", re.sub(r"\d", "9", _squash(ref)))


def _distance_within(pattern: str, text: str) -> int:
    """The fewest edits that turn ``pattern`` into some stretch of ``text`` (Sellers)."""
    previous = [0] * (len(text) + 1)  # a match may start anywhere in ``text``
    for i, p in enumerate(pattern, 1):
        current = [i] + [0] * len(text)
        for j, t in enumerate(text, 1):
            current[j] = min(previous[j - 1] + (p != t), previous[j] + 1, current[j - 1] + 1)
        previous = current
    return min(previous)


def _is_reference(token: str) -> bool:
    return len(re.sub(r"\W", "", token)) >= 6 and sum(c.isdigit() for c in token) >= 3


def _fold(text: str) -> str:
    return re.sub(r"our\b|our(?=[a-z])", "or", text.lower())  # colour = color


def _enum(values: list[str], text: str) -> str | None:
    """The value said first; a value's words may be said with an ending ("trims",
    "coloured")."""
    said = _fold(text)
    best: tuple[int, str] | None = None
    for v in values:
        words = _fold(v).split()
        if not words:
            continue
        pattern = r"\b" + r"\w*\s+".join(re.escape(w) for w in words) + r"\w*"
        m = re.search(pattern, said)
        if m is not None and (best is None or m.start() < best[0]):
            best = (m.start(), v)
    return best[1] if best else None


def misheard(text: str) -> str:
    """``text`` with what Whisper tiny.en often writes for a spoken "three" ("at free")
    put right: "at free" is never meant."""
    return re.sub(r"\b(at|around|about|by|until) (?:free|tree)\b", r"\1 three", text,
                  flags=re.I)


def clock(text: str) -> str | None:
    """The clock time said, as ``HH:MM`` (business hours for a bare hour)."""
    low = misheard(text.lower())
    if re.search(r"\b(noon|midday)\b", low):
        return "12:00"
    for m in _CLOCK.finditer(low):
        h_text = m.group("h")
        hour = int(h_text) if h_text.isdigit() else _NUMBERS[h_text]
        minute = int(m.group("m") or 0)
        tail = (m.group("tail") or "").strip()
        lead = m.group(0).strip().split()[0] if m.group(0).strip() else ""
        if not tail and not m.group("m") and lead not in (
                "at", "around", "by", "from", "about", "to", "until"):
            continue  # a bare number with no "at" or "p.m." is not a time ("for 2 people")
        if not 0 <= hour <= 23 or minute > 59:
            continue
        if tail.startswith("p") or tail in ("in the afternoon", "in the evening", "tonight"):
            hour += 12 if hour < 12 else 0
        elif tail.startswith("a") or tail == "in the morning":
            hour = 0 if hour == 12 else hour
        elif 1 <= hour <= 7:
            hour += 12
        return f"{hour:02d}:{minute:02d}"
    return None


def day(text: str, today: dt.date | None = None) -> str | None:
    """The day said ("today", "tomorrow", "friday", "next friday"); with ``today``, as an
    ISO date."""
    low = text.lower()
    m = re.search(r"\b(day after tomorrow|today|tomorrow|tonight|(?:next\s+)?("
                  + "|".join(WEEKDAYS) + r"))\b", low)
    if m is None:
        return None
    said = "today" if m.group(1) == "tonight" else m.group(1)
    if today is None:
        return said
    if said == "today":
        return today.isoformat()
    if said == "tomorrow":
        return (today + dt.timedelta(days=1)).isoformat()
    if said == "day after tomorrow":
        return (today + dt.timedelta(days=2)).isoformat()
    # "next friday" is taken as the coming Friday, as most callers mean it.
    ahead = (WEEKDAYS.index(m.group(2)) - today.weekday()) % 7 or 7
    return (today + dt.timedelta(days=ahead)).isoformat()
