"""Runs of digits in a transcript, figures and words mixed, and which of them are personal data.

A *digit run* is what a caller reading out a number produces once a recogniser has
written it down: figures and number words ("4111", "four", "oh" or "o" for zero, "forty
one", "eleven", "eight hundred", "double five", "triple oh") joined by spaces, hyphens,
dashes, en dashes, commas, dots, slashes, parentheses, the words "dash" and "hyphen", and
hesitations ("uh", "um"). A run is personal data when it holds :data:`MIN_DIGITS` or more
digits; shorter ones (times, quantities, years, prices, "flight 370") stay. It is then
named by its shape (see :func:`_classify`).

The scan is one pass over the words (no regular expression with nested repetition), so
its time grows with the length of the text and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

CARD = "[card number]"
PHONE = "[phone number]"
SSN = "[social security number]"
NUMBER = "[number]"

MIN_DIGITS = 7  # a run with fewer digits is a time, a quantity, a year, a price...

DIGITS = {"zero": "0", "oh": "0", "o": "0", "nought": "0", "naught": "0", "one": "1",
          "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
          "eight": "8", "nine": "9"}
TEENS = {"ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
         "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18",
         "nineteen": "19"}
TENS = {"twenty": "2", "thirty": "3", "forty": "4", "fourty": "4", "fifty": "5",
        "sixty": "6", "seventy": "7", "eighty": "8", "ninety": "9"}
REPEAT = {"double": 2, "triple": 3}
AMOUNT = frozenset({"thousand", "million", "billion", "grand"})  # a sum of money, not an id
HUNDRED = "hundred"
# Words that may sit between the digits of one number.
_GLUE_WORDS = frozenset({"dash", "hyphen", "uh", "um", "umm", "er", "erm", "ah", "hmm"})
_GLUE_CHARS = frozenset("-–—,./()")
_CURRENCY = frozenset("$€£¥")
_MAX_GLUE = 4  # tokens of glue between two digits of the same run ("4111, uh, 1111")

TOKEN = re.compile(r"[^\W_]+|\S")

_SSN_SHAPE = re.compile(r"\d{3}([- ])\d{2}\1\d{4}")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DATE = re.compile(r"\d{1,2}([-/.])\d{1,2}\1(?:\d{2}|\d{4})|\d{4}([-/.])\d{1,2}\2\d{1,2}")
_DECIMAL = re.compile(r"\d{1,3}\.\d+")
_YEAR = re.compile(r"(?:19|20)\d\d")


def unit_word(word: str) -> bool:
    """Whether ``word`` (case-folded) is a number word that adds digits to a run."""
    return (word in DIGITS or word in TEENS or word in TENS or word in REPEAT
            or word == HUNDRED)


def max_digits(word: str) -> int:
    """At most how many digits ``word`` (case-folded, a number word) adds to a run."""
    if word in DIGITS:
        return 1
    if word in REPEAT:
        return REPEAT[word] - 1  # the digit word after it counts the first
    return 2  # teens, tens ("forty one": 2 + 1 >= 2), "hundred" ("eight hundred": 1 + 2)


def redact_runs(text: str) -> str:
    """``text`` with every digit run that is personal data replaced by its placeholder."""
    out: list[str] = []
    pos = 0
    for start, end, placeholder in _runs(text):
        out.append(text[pos:start])
        out.append(placeholder)
        pos = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _kind(tok: str) -> str:
    """'fig' (figures), 'word' (a number word), 'amount', 'glue', or 'other'."""
    if tok.isdecimal():
        return "fig"
    if len(tok) == 1 and tok in _GLUE_CHARS:
        return "glue"
    word = tok.casefold()
    if unit_word(word):
        return "word"
    if word in _GLUE_WORDS:
        return "glue"
    if word in AMOUNT:
        return "amount"
    return "other"


def _runs(text: str) -> Iterator[tuple[int, int, str]]:
    toks = [(m.start(), m.end(), m.group()) for m in TOKEN.finditer(text)]
    kinds = [_kind(t) for _, _, t in toks]
    n = len(toks)
    i = 0
    while i < n:
        if kinds[i] == "other" and sum(ch.isdecimal() for ch in toks[i][2]) >= MIN_DIGITS:
            yield toks[i][0], toks[i][1], NUMBER  # "A1234567", "1Z999AA10123456784"
            i += 1
            continue
        if kinds[i] not in ("fig", "word") or not _can_start(toks, i):
            i += 1
            continue
        units = [i]
        j = i + 1
        glue = 0
        amount = False
        while j < n:
            k = kinds[j]
            if k in ("fig", "word"):
                units.append(j)
                glue = 0
            elif k == "glue" or (toks[j][2].casefold() == "and"
                                 and toks[units[-1]][2].casefold() == HUNDRED):
                glue += 1
                if glue > _MAX_GLUE:
                    break
            else:
                amount = k == "amount"
                break
            j += 1
        last = units[-1]
        first = i
        if first > 0 and toks[first - 1][2] == "(":
            first -= 1
        if first > 0 and toks[first - 1][2] == "+":
            first -= 1
        close = last
        if toks[first][2] == "(" and last + 1 < n and toks[last + 1][2] == ")":
            close = last + 1  # "(555)" whole
        i = last + 1
        if amount or _after_currency(text, toks[first][0]):
            continue
        placeholder = _classify(text[toks[first][0]:toks[close][1]],
                                [toks[u][2] for u in units], toks, units)
        if placeholder is not None:
            yield toks[first][0], toks[close][1], placeholder


def _can_start(toks: list[tuple[int, int, str]], i: int) -> bool:
    word = toks[i][2].casefold()
    if word == "o" or word == HUNDRED:
        return False  # "o" is a zero only inside a run: "I O U", "o'clock"
    # "Oh, ...": the interjection
    return not (word == "oh" and i + 1 < len(toks) and toks[i + 1][2] in ",.!?")


def _after_currency(text: str, start: int) -> bool:
    before = text[max(0, start - 2):start].rstrip()
    return bool(before) and before[-1] in _CURRENCY


def _digits(words: list[str]) -> str:
    """The digits that number words and figures, in order, spell out."""
    out: list[str] = []
    tens = ""      # "forty" waiting for a unit: "forty one" is 41
    repeat = 1     # "double"/"triple" waiting for its digit
    fill = -1      # index in out of a "00" after "hundred" that the next words fill

    def put(digits: str) -> None:
        nonlocal fill
        if fill >= 0:  # "eight hundred fifty five": the tens fill the hundred's "00"
            out[fill] = digits
            fill = -1
        else:
            out.append(digits)

    for tok in words:
        word = tok.casefold()
        if tens and word not in DIGITS:
            put(tens + "0")
            tens = ""
        if tok.isdecimal():
            fill = -1
            out.append("".join(str(int(ch)) for ch in tok))
        elif word in DIGITS:
            if tens:
                put(tens + DIGITS[word])
                tens = ""
            else:  # a lone digit after "hundred" is the next digit: "eight hundred five five"
                fill = -1
                out.append(DIGITS[word] * repeat)
            repeat = 1
        elif word in TEENS:
            put(TEENS[word])
        elif word in TENS:
            tens = TENS[word]
        elif word in REPEAT:
            repeat = REPEAT[word]
        elif word == HUNDRED:
            out.append("00")
            fill = len(out) - 1
    if tens:
        put(tens + "0")
    return "".join(out)


def _groups(toks: list[tuple[int, int, str]], units: list[int]) -> list[int]:
    """Digits in each group of the run: groups are split by glue, and by a space between
    two figures ("123 45 6789"); spoken digits in a row are one group."""
    sizes: list[int] = []
    prev = -1
    for u in units:
        digits = len(_digits([toks[u][2]]))
        new = prev < 0 or u - prev > 1 or toks[u][2].isdecimal() or toks[prev][2].isdecimal()
        if new or not sizes:
            sizes.append(digits)
        else:
            sizes[-1] += digits
        prev = u
    return sizes


def _classify(run: str, words: list[str], toks: list[tuple[int, int, str]],
              units: list[int]) -> str | None:
    number = _digits(words)
    n = len(number)
    if n < MIN_DIGITS:
        return None
    if _THOUSANDS.fullmatch(run) or _DATE.fullmatch(run) or _DECIMAL.fullmatch(run):
        return None  # 1,250,000; 12-25-2024; 3.14159265
    if all(w.isdecimal() and _YEAR.fullmatch(w) for w in words) and len(words) <= 3:
        return None  # "2023, 2024"
    if _SSN_SHAPE.fullmatch(run) or _groups(toks, units) == [3, 2, 4]:
        return SSN
    if run.startswith("+"):
        return PHONE
    spoken = any(not w.isdecimal() for w in words) or (
        len(words) > 1 and max(len(w) for w in words) == 1)
    if 13 <= n <= 19 and (spoken or luhn_valid(number)):
        return CARD
    if run.startswith("(") or n in (7, 10) or (n == 11 and number[0] in "01") or (
            number.startswith("00") and 11 <= n <= 15):
        return PHONE
    return NUMBER


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a card number (``digits``: figures only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0
