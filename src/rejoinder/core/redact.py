"""Personal data in a spoken-language transcript, replaced by typed placeholders.

:func:`redact` reads the caller's words as a speech recogniser writes them and replaces,
keeping every other character as it was:

``[email]``
    ``local@domain``, and what a recogniser makes of one: "at", "dot", "underscore" and
    "dash" spoken or written in any mix ("john dot doe at example dot com", "john_doe at
    gmail.com"), a spelled local part ("j o h n at gmail dot com"), spaces or commas
    around the pieces, the local part alone before "at" lost ("at gmail.com"), and an
    address whose "at" the recogniser dropped: a dotted name of three or more labels that
    ends in a known top-level domain ("John.do.example.com"). Before a spoken "at" the
    local part may be two words ("John Doe at gmail.com") unless the first is an ordinary
    word ("write to me at ...").
``[web address]``
    A bare domain, written or spoken ("example.com", "example dot co dot uk"). It is not
    always personal ("amazon.com"), but a private domain is, and a recogniser that drops
    "at" turns an email into one: privacy first.
``[iban]``
    A written IBAN (country, check digits, groups of four): with a valid mod-97 check, or
    with 10 or more digits in it (a misheard digit breaks the check).
``[social security number]``, ``[card number]``, ``[phone number]``, ``[number]``
    A digit run of 7 or more digits, figures and number words mixed
    (:mod:`rejoinder.core.spoken_numbers`). A long run of digits a caller reads out is an
    account, policy, order or misheard card number far more often than something
    harmless, so it is redacted whatever its shape. Not personal data, and left as they
    are: a run after a currency sign, grouped in thousands (``1,250,000``) or followed by
    "thousand"/"million", a date (``12-25-2024``), a decimal (``3.14159265``), up to three
    years ("2023, 2024"), and digits glued to letters (``4th``, ``221B``, ``a1b2c3``) but
    for a word of 7 digits or more (``A1234567``, a tracking code: ``[number]``).

Known false positives, accepted: a spoken count to seven ("one, two, three, ...") and a
bare domain. Not covered: names, street addresses, dates (of birth too: the agent needs
them), IP addresses (redacted as ``[number]`` when 7 digits or more), PINs and other
numbers under 7 digits.

While the caller is still speaking, :func:`read_ahead_text` gives the part of a partial
transcript that is safe to send: nothing of a number, an email or a spelled word still
being said.

The result depends on the text alone, so a conversation history redacts to the same
prompt every turn and a provider's prompt cache keeps working; placeholders contain
nothing that matches again, so redacting twice changes nothing more. No pattern has a
repetition whose pieces can overlap and no match may start inside a chain another attempt
already scanned, so the time grows with the length of the text, not faster.
"""

from __future__ import annotations

import re

from rejoinder.core.spoken_numbers import (
    CARD,
    MIN_DIGITS,
    NUMBER,
    PHONE,
    SSN,
    luhn_valid,
    max_digits,
    redact_runs,
    unit_word,
)

__all__ = ["CARD", "EMAIL", "IBAN", "NUMBER", "PHONE", "SSN", "WEB", "luhn_valid",
           "might_hold_personal_data", "read_ahead_text", "redact"]

EMAIL = "[email]"
IBAN = "[iban]"
WEB = "[web address]"
PLACEHOLDERS = (CARD, PHONE, EMAIL, SSN, IBAN, NUMBER, WEB)

_TLD_WRITTEN = (r"(?:com|org|net|edu|gov|info|biz|io|ai|app|dev|me|co|us|uk|ca|au|nz|ie|de|"
                r"fr|es|it|nl|be|ch|se|dk|fi|pl|eu|in|jp|br|mx|at)")
# Spoken, only those that are no common word ("dot in the middle", "dot it", "dot me").
_TLD_SPOKEN = r"(?:com|org|net|edu|gov|info|biz|io|co|uk|ca|au|nz|ie|de|fr|eu|nl|jp)"
_SECOND_LEVEL = frozenset({"co", "com", "org", "net", "ac", "gov", "edu"})
_SP = r"(?:[ \t]*,[ \t]*|[ \t]+)"  # a space, or a comma with spaces round it
# A written "." only glued: "I'm at home. Com..." and "at work. Co-workers" are no address.
_DOT = rf"(?:\.|{_SP}(?:dot|period){_SP})"
_DOT_END = rf"(?:\.{_TLD_WRITTEN}|{_SP}dot{_SP}{_TLD_SPOKEN})(?!\w)"
_LABEL = r"[^\W_][\w-]*"
# The local part: words joined by a written ".", or a spoken "dot"/"underscore"/"dash"; or
# letters spelled one by one. No match starts inside such a chain (the lookbehinds).
_JOIN = rf"(?:\.|{_SP}(?:dot|underscore|dash|hyphen){_SP})"
_WORDS = (r"(?<![\w.+'’-])(?<!dot )(?<!underscore )(?<!dash )(?<!hyphen )"
          rf"[\w+-]+(?:{_JOIN}[\w+-]+){{0,12}}+")
_SPELLED = (r"(?<![\w.'’-])(?<![\s,.-]\w )(?<!^\w )(?<![\s,.-]\w, )(?<!^\w, )"
            r"(?<![\s,.-]\w\. )(?<!^\w\. )(?<!dot )(?<!underscore )"
            r"(?<!dash )(?<!hyphen )"
            rf"[^\W_](?:(?: |[-.]|[,.] |{_SP}(?:dot|underscore|dash|hyphen){_SP})"
            r"[^\W_](?!\w)){1,64}+")
_EMAIL = re.compile(
    rf"(?:(?:{_SPELLED}|{_WORDS}){_SP}?|(?<!\w)(?=at\b))"
    rf"(?:(?<=[\w ,\t])@{_SP}?{_LABEL}(?:{_DOT}{_LABEL}){{1,8}}"  # written "@": any domain
    rf"|(?<!\w)(?P<at>at){_SP}{_LABEL}(?:{_DOT}{_LABEL}){{0,8}}{_DOT_END})",  # spoken: known TLD
    re.IGNORECASE)
# A domain with no "@" or "at" before it, written or spoken.
_DOMAIN = re.compile(
    rf"(?<![\w.@'’-])(?<!dot )(?<!dot, )({_LABEL})((?:(?:\.|{_SP}dot{_SP}){_LABEL}){{0,8}})"
    rf"(?:\.{_TLD_WRITTEN}|{_SP}dot{_SP}{_TLD_SPOKEN})(?![\w@]|\.\w)",
    re.IGNORECASE)
_CUED_LOCAL = re.compile(r"\b(?:e-?mail|address)(?:[ \t]+(?:is|was))?[ \t]*[:,]?[ \t]+"
                         r"([\w.+-]+(?:[ \t]+[\w.+-]+)?)[ \t]+$", re.IGNORECASE)
_IBAN = re.compile(r"(?<![^\W_])[A-Z]{2}[ ]?\d{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?"
                   r"(?![^\W_])", re.IGNORECASE)

# Ordinary words that are no part of an address: "write to me at ..." keeps "to".
_STOP = frozenset({"a", "address", "an", "and", "as", "at", "be", "but", "by", "call", "com",
                   "contact", "dot", "e-mail", "email", "find", "for", "from", "her", "here",
                   "him", "his", "i", "i'm", "im", "in", "is", "it", "it's", "its", "just",
                   "mail", "me", "my", "net", "no", "of", "ok", "okay", "on", "or", "org",
                   "our", "please", "reach", "send", "so", "sure", "thank", "thanks", "that",
                   "that's", "the", "their", "them", "there", "these", "they", "this", "those",
                   "to", "try", "us", "use", "was", "we", "with", "write", "yes", "you",
                   "your"})

# The cheap test first: could any pattern match at all?
_DIGITISH = re.compile(r"\d|[^\W\d_]+", re.IGNORECASE)
_DOT_HINT = re.compile(r"\.|\b(?:dot|period)\b", re.IGNORECASE)
_AT_WORD = re.compile(r"\bat\b", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with emails, web addresses, IBANs and long digit runs replaced."""
    if _DOT_HINT.search(text):  # every address has a dot, written or spoken
        if "@" in text or _AT_WORD.search(text):
            text = _sub_emails(text)
        text = _sub_domains(text)
    if _enough_digits(text):
        text = _IBAN.sub(_iban, text)
        text = redact_runs(text)
    return text


def might_hold_personal_data(text: str) -> bool:
    """False when :func:`redact` certainly leaves ``text`` as it is (a quick test)."""
    return bool(_DOT_HINT.search(text)) or _enough_digits(text)


def _enough_digits(text: str) -> bool:
    digits = 0
    for m in _DIGITISH.finditer(text):
        tok = m.group()
        if tok[0].isdecimal():
            digits += 1
        else:
            word = tok.casefold()
            if not unit_word(word):
                continue
            digits += max_digits(word)
        if digits >= MIN_DIGITS:
            return True
    return False


def _sub_emails(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _EMAIL.finditer(text):
        start = m.start()
        if m.group("at") and text[start:m.start("at")].strip(" \t,").casefold() in _STOP:
            start = m.start("at")  # "write to me at gmail.com": "me" is no local part
        elif start > pos and (not m.group("at") or start < m.start("at")):
            # the word before a local part may be its first half: "John Doe at gmail.com"
            before = re.search(r"([^\W\d_][\w'’-]*)[ \t]+$", text[max(pos, start - 40):start])
            if before and before.group(1).casefold() not in _STOP:
                start -= len(before.group())
        out.append(text[pos:start])
        out.append(EMAIL)
        pos = m.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _sub_domains(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _DOMAIN.finditer(text):
        start, placeholder = m.start(), _domain(m)
        if placeholder is None:
            continue
        # "my email is johndoe gmail.com": after "email" or "address", the words before
        # a domain are the local part whose "at" the recogniser lost.
        cue = _CUED_LOCAL.search(text, max(pos, start - 60), start)
        if cue is not None:
            start, placeholder = cue.start(1), EMAIL
        out.append(text[pos:start])
        out.append(placeholder)
        pos = m.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _domain(m: re.Match[str]) -> str | None:
    words = [w for w in re.split(r"[\s.,]+", m.group().casefold()) if w]
    labels = [w for w in words if w != "dot"]
    spoken = len(labels) < len(words)
    if spoken and labels[0] in _STOP | {"polka", "one", "each", "every", "that"}:
        return None  # "the dot com era", "on the dot"
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        labels.pop()  # example.co.uk
    if len(labels) >= 3 and labels[0] != "www":
        return EMAIL  # "John.do.example.com": an email whose "at" was lost
    return WEB


def _iban(m: re.Match[str]) -> str:
    raw = m.group()
    code = raw.replace(" ", "").replace("-", "").upper()
    if not (15 <= len(code) <= 34 and code.isascii()):  # case folding matches a few others
        return raw
    number = "".join(str(int(ch, 36)) for ch in code[4:] + code[:4])
    if int(number) % 97 == 1 or sum(ch.isdigit() for ch in code) >= 10:
        return IBAN
    return raw


# --- what may be read ahead while the caller still speaks -------------------------------

_RA_TOKEN = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS) + r"|[^\W_]+|\S")
_EMAIL_CUES = frozenset({"email", "emails", "mail", "address", "addresses"})
_CHUNK = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS) + r"|\S+")
_JOIN_WORDS = frozenset({"dot", "underscore", "dash", "hyphen", "at", "period"})
HOLD_WORDS = 2  # the last words are held back: they may begin an address ("john doe at")


def read_ahead_text(text: str) -> str:
    """What of a partial transcript (the caller still speaking) may be sent ahead: its
    redaction, cut before anything that may be the start of personal data not yet
    complete, and without its last :data:`HOLD_WORDS` words.

    Cut before: the first figure or number word left after redaction (a number being
    said is never sent in any form: "4-1-1-1", "forty one", "double four", "oh"); the
    first letters spelled one by one ("j o h n"); the words joined by "dot", "at",
    "underscore", "@" or a glued "." that are not yet a whole address, and the word
    before them; and anything after "email", "address", "card", "number"... that no
    placeholder has closed yet. Losing some read-ahead costs a little latency; sending a
    half-said number would leak it."""
    red = redact(text)
    toks = [(m.start(), m.end(), m.group()) for m in _RA_TOKEN.finditer(red)]
    cut = len(red)
    cue = -1
    for i, (start, _, tok) in enumerate(toks):
        word = tok.casefold()
        if tok in PLACEHOLDERS:
            cue = -1  # what the cue announced is redacted: closed
            continue
        if cue < 0 and word in _EMAIL_CUES:
            cue = toks[i][1]
        if any(ch.isdecimal() for ch in tok) or (
                unit_word(word) and not _interjection(toks, i)) or _spelled(toks, i):
            cut = start
            break
        if word in _JOIN_WORDS or tok == "@" or (tok in "._" and _glued(toks, i)):
            if word == "at" and len(toks) - i > 4:
                continue  # "at" long before the end: "I'm at home and ..." is no address
            cut = _word_before(toks, i)
            break
    if cue >= 0:
        cut = min(cut, cue)
    # The last words before the cut are held back too: they may begin an address.
    chunks = [m.start() for m in _CHUNK.finditer(red, 0, cut)]
    if len(chunks) <= HOLD_WORDS:
        return ""
    return red[:chunks[-HOLD_WORDS]].rstrip(" \t,-–—(")


def _interjection(toks: list[tuple[int, int, str]], i: int) -> bool:
    """"Oh," and "oh." are the interjection, not a zero (outside a run)."""
    return toks[i][2].casefold() == "oh" and i + 1 < len(toks) and toks[i + 1][2] in ",.!?"


def _spelled(toks: list[tuple[int, int, str]], i: int) -> bool:
    """Whether token ``i`` is a single letter with another single letter next to it."""
    def single(j: int) -> bool:
        return 0 <= j < len(toks) and len(toks[j][2]) == 1 and toks[j][2].isalpha()
    if not single(i):
        return False
    nxt = i + 1
    if nxt < len(toks) and toks[nxt][2] in "-.,":
        nxt += 1
    return single(nxt)


def _glued(toks: list[tuple[int, int, str]], i: int) -> bool:
    return (0 < i < len(toks) - 1 and toks[i - 1][1] == toks[i][0]
            and toks[i][1] == toks[i + 1][0] and toks[i + 1][2][0].isalnum())


def _word_before(toks: list[tuple[int, int, str]], i: int) -> int:
    """Where the word before token ``i`` starts (its glued pieces included)."""
    j = i - 1
    while j >= 0 and not toks[j][2][0].isalnum():
        j -= 1
    while j > 0 and toks[j - 1][1] == toks[j][0]:
        j -= 1
    return toks[j][0] if j >= 0 else 0
