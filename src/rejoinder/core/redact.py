"""Personal data in a spoken-language transcript, replaced by typed placeholders.

:func:`redact` reads the caller's words as a speech recogniser writes them (Whisper
spells digits as figures or as words, groups them with spaces, hyphens or commas, and
writes an address either as ``john.doe@example.com`` or ``john dot doe at example dot
com``) and replaces, keeping every other character as it was:

``[email]``
    ``local@domain.tld``, with "at" and "dot" spoken or written in any mix. The spoken
    form needs "at" and a known top-level domain after a "dot" or ".", so "I'm at home"
    and "connect the dots" stay.
``[iban]``
    A written IBAN (two letters, two check digits, groups of four) whose mod-97 check holds.
``[social security number]``, ``[card number]``, ``[phone number]``, ``[number]``
    A *digit run*: figures and digit words ("zero" to "nine", "oh" for zero, "double" and
    "triple") joined by spaces, hyphens, commas or parentheses, with an optional leading
    "+". A run is personal data when it holds **7 or more digits**; shorter ones (times,
    quantities, years, prices, "33, 4, 692") stay. A long run is then named by its shape:

    * ``123-45-6789`` (or with spaces): a social security number;
    * 13-19 digits: a card number, when written as figures only if the Luhn check holds;
      when any digit was spoken as a word, or each figure stands alone ("4 1 1 1 ..."),
      without the check, since a single misheard digit breaks Luhn;
    * a leading "+", a parenthesised group, or 7, 10 or 11 (starting with 0 or 1) digits:
      a phone number;
    * anything else, including 13-19 figures that fail Luhn: ``[number]``. A long run of
      digits a caller reads out is an account, policy, order or misheard card number far
      more often than something harmless, so it is redacted whatever its shape.

    Not personal data, and left as they are: a run that follows a currency sign or is
    grouped in thousands (``$1,250,000``, ``1,250,000``), a date (``12-25-2024``,
    ``2024-12-25``), and digits glued to letters or after a decimal point (``4th``,
    ``3.14159265``, an id such as ``a1b2c3``).

Number words other than digits ("twenty", "hundred") are not counted: the recogniser writes
such numbers as figures. "Oh" followed by punctuation is the interjection, not a zero. Known
false positives, accepted: a spoken count to seven ("one, two, three, ...") and two years
joined by a comma ("2023, 2024"). Not covered: names, street addresses, dates (of birth
too: the agent needs dates), IP addresses.

The result depends on the text alone (no randomness, no clock), so a conversation history
redacts to the same prompt every turn and a provider's prompt cache keeps working; placeholders
contain nothing that matches again, so redacting twice changes nothing more. Every pattern is
compiled once; none has a repetition whose pieces can overlap, and no match may start inside
a chain another attempt already scanned, so the time taken grows with the length of the text,
not faster, whatever the text (a long adversarial input takes milliseconds).
"""

from __future__ import annotations

import re

CARD = "[card number]"
PHONE = "[phone number]"
EMAIL = "[email]"
SSN = "[social security number]"
IBAN = "[iban]"
NUMBER = "[number]"

MIN_DIGITS = 7  # a run with fewer digits is a time, a quantity, a year, a price...

_WORD_DIGITS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_REPEAT = {"double": 2, "triple": 3}
# "oh" followed by punctuation is the interjection ("Oh, 555-123-4567"), not a zero.
_DIGIT_WORD = r"(?:zero|one|two|three|four|five|six|seven|eight|nine|oh(?![ \t]*[,.!?]))"
_UNIT = rf"(?:(?:double|triple)[ \t]+)?(?:\d+|{_DIGIT_WORD})(?!\w)"
_SEP = r"(?:[ \t]*[-–,()][ \t]*|[ \t]+)"  # non-empty: a unit is never split in two
_RUN = re.compile(rf"(?<![\w.+$€£'’-])(?:\+[ \t]*)?\(?{_UNIT}(?:{_SEP}{_UNIT})*",
                  re.IGNORECASE)
_UNITS = re.compile(rf"(?:(double|triple)[ \t]+)?(\d+|{_DIGIT_WORD})(?!\w)", re.IGNORECASE)

_SSN_SHAPE = re.compile(r"\d{3}([- ])\d{2}\1\d{4}")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+")
_DATE = re.compile(r"\d{1,2}-\d{1,2}-(?:\d{2}|\d{4})|\d{4}-\d{1,2}-\d{1,2}")

# An email: the local part's words joined by "." or a spoken "dot"/"underscore"/"dash";
# no match starts inside such a chain (the lookbehinds), which keeps the search linear.
_JOIN = r"(?:\.|[ \t]+(?:dot|underscore|dash|hyphen)[ \t]+)"
_LOCAL = (rf"(?<![\w.+'’-])(?<!dot )(?<!underscore )(?<!dash )(?<!hyphen )"
          rf"[\w+-]+(?:{_JOIN}[\w+-]+)*+")
_DOT = r"(?:\.|[ \t]+dot[ \t]+)"
_TLD = (r"(?:com|org|net|edu|gov|info|biz|io|ai|app|dev|me|co|us|uk|ca|au|nz|ie|de|fr|es|"
        r"it|nl|be|ch|se|dk|fi|pl|eu|in|jp)")
_EMAIL = re.compile(
    rf"{_LOCAL}(?:[ \t]*@[ \t]*[\w-]+(?:{_DOT}[\w-]+)+"  # written "@": any domain
    rf"|[ \t]+at[ \t]+[\w-]+(?:{_DOT}[\w-]+)*{_DOT}{_TLD}(?!\w))",  # spoken "at": a known TLD
    re.IGNORECASE)

_IBAN = re.compile(r"(?<![^\W_])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?"
                   r"(?![^\W_])", re.IGNORECASE)

# The cheap test first: is there anything a pattern could match at all?
_DIGITISH = re.compile(rf"\d|\b(?:{_DIGIT_WORD}|double|triple)\b", re.IGNORECASE)
_AT_WORD = re.compile(r"\bat\b", re.IGNORECASE)
_LAST_WORDS_DIGIT = re.compile(  # a digit among the last three words
    rf"(?:(?<![^\W\d_])\d|\b(?:{_DIGIT_WORD}|double|triple)\b)\S*(?:\s+\S+){{0,2}}\s*$",
    re.IGNORECASE)
_DOT_HINT = re.compile(r"\bdot\b|\.\w", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with emails, IBANs and long digit runs replaced by placeholders."""
    if not might_hold_personal_data(text):
        return text
    text = _EMAIL.sub(EMAIL, text)
    text = _IBAN.sub(_iban, text)
    return _RUN.sub(_run, text)


def number_pending(text: str) -> bool:
    """Whether the last words of a transcript still being spoken hold a digit (a figure or
    a digit word): a number may be half said, too short yet for :func:`redact` to judge
    ("my card is 4111 11"), so words so far that end this way are not sent anywhere."""
    return bool(_LAST_WORDS_DIGIT.search(text))


def before_pending_number(text: str) -> str:
    """``text`` cut before a number that may still be being said (see
    :func:`number_pending`), and before any digits just ahead of it: "go forward 10" ->
    "go forward", "my card is 4111 1111 1111" -> "my card is"."""
    while (m := _LAST_WORDS_DIGIT.search(text)) is not None:
        text = text[:m.start()].rstrip()
    return text


def might_hold_personal_data(text: str) -> bool:
    """False when :func:`redact` certainly leaves ``text`` as it is (a quick test)."""
    if "@" in text:
        return True
    if _AT_WORD.search(text) and _DOT_HINT.search(text):
        return True
    digits = 0
    for m in _DIGITISH.finditer(text):  # "double" and "triple" count the digits they add
        digits += 2 if m.group().casefold() == "triple" else 1
        if digits >= MIN_DIGITS:
            return True
    return False


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a card number (``digits``: figures only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _iban(m: re.Match[str]) -> str:
    raw = m.group()
    code = raw.replace(" ", "").upper()
    if not (15 <= len(code) <= 34 and code.isascii()):  # case folding matches a few others
        return raw
    number = "".join(str(int(ch, 36)) for ch in code[4:] + code[:4])
    return IBAN if int(number) % 97 == 1 else raw


def _run(m: re.Match[str]) -> str:
    run = m.group()
    digits: list[str] = []
    spoken = False
    widths: list[int] = []
    for repeat, unit in _UNITS.findall(run):
        # casefold: what IGNORECASE matched ("ſix" is "six"); any other word is one digit
        figures = unit if unit[0].isdigit() else _WORD_DIGITS.get(unit.casefold(), "0")
        spoken = spoken or not unit[0].isdigit() or bool(repeat)
        digits.append(figures * _REPEAT.get(repeat.casefold(), 1))
        widths.append(len(unit))
    number = "".join(digits)
    n = len(number)
    if n < MIN_DIGITS or _THOUSANDS.fullmatch(run) or _DATE.fullmatch(run):
        return run
    if _SSN_SHAPE.fullmatch(run):
        return SSN
    if run.startswith("+"):
        return PHONE
    spoken = spoken or (len(widths) > 1 and max(widths) == 1)
    if 13 <= n <= 19 and (spoken or luhn_valid(number)):
        return CARD
    if "(" in run or n in (7, 10) or (n == 11 and number[0] in "01"):
        return PHONE
    return NUMBER
