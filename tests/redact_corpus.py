"""A corpus of transcripts that hold personal data, as a caller says it and a recogniser
writes it, and of ordinary ones that hold none; generated from seeds (deterministic) plus
hand-written ones. Used by ``test_redact_corpus.py``; run as a script it prints the figures.

A *leak* (the bar is zero):

* a number (card, phone, social security, IBAN, account): 4 or more consecutive digits of
  it left in the text, as figures or number words (:func:`leaked_digits`);
* an email: a piece of its local part (split at ``. _ -``, 3 letters or more) left in
  the text, whole, or spelled letter by letter (:func:`leaked_local`).

For the read-ahead (a prefix of the utterance at each word boundary) the bar is higher:
nothing of the number at all (no figure, no number word) and no piece of the local part.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from rejoinder.core.spoken_numbers import DIGITS, TEENS, TENS, TOKEN

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TENS_WORDS = {v: k for k, v in TENS.items() if k != "fourty"}
TEENS_WORDS = {v: k for k, v in TEENS.items()}


@dataclass(frozen=True)
class Case:
    kind: str
    text: str
    secret: str  # the digits, or the local part of an email


# --- renderings of a number read out ------------------------------------------------------

def _word(d: str, oh: bool = False) -> str:
    return "oh" if oh and d == "0" else WORDS[int(d)]


def _pairs(group: str) -> str:
    """ "4111" -> "forty one eleven"; "0958" -> "oh nine fifty eight"."""
    out = []
    for i in range(0, len(group) - 1, 2):
        a, b = group[i], group[i + 1]
        if a == "0":
            out += ["oh", _word(b)]
        elif a == "1":
            out.append(TEENS_WORDS[a + b])
        else:
            out.append(TENS_WORDS[a] + ("" if b == "0" else " " + _word(b)))
    if len(group) % 2:
        out.append(_word(group[-1], oh=True))
    return " ".join(out)


def _repeats(group: str) -> str:
    """ "4111" -> "four triple one"; "5500" -> "double five double oh"."""
    out, i = [], 0
    while i < len(group):
        j = i
        while j < len(group) and group[j] == group[i] and j - i < 3:
            j += 1
        n = j - i
        w = _word(group[i], oh=True)
        out.append(w if n == 1 else ("double " if n == 2 else "triple ") + w)
        i = j
    return " ".join(out)


def _mixed(groups: list[str]) -> str:
    return " ".join(g if i % 2 == 0 else " ".join(_word(d) for d in g)
                    for i, g in enumerate(groups))


RENDERINGS: dict[str, Callable[[list[str]], str]] = {
    "grouped": lambda g: " ".join(g),
    "hyphens": lambda g: "-".join(g),
    "compact": lambda g: "".join(g),
    "commas": lambda g: ", ".join(g),
    "dots": lambda g: ".".join(g),
    "digit by digit": lambda g: " ".join("".join(g)),
    "digits hyphenated": lambda g: "-".join("".join(g)),
    "digits with commas": lambda g: ", ".join("".join(g)),
    "whisper groups": lambda g: ", ".join("-".join(x) for x in g),
    "whisper full stops": lambda g: " ".join(d + "." for d in "".join(g)),
    "words": lambda g: " ".join(_word(d) for d in "".join(g)),
    "words with oh": lambda g: " ".join(_word(d, oh=True) for d in "".join(g)),
    "words hyphenated": lambda g: "-".join(_word(d) for d in "".join(g)),
    "words in groups": lambda g: ", ".join(" ".join(_word(d) for d in x) for x in g),
    "capitalised words": lambda g: ". ".join(
        " ".join(_word(d) for d in x).capitalize() for x in g),
    "pairs": lambda g: ", ".join(_pairs(x) for x in g),
    "double and triple": lambda g: ", ".join(_repeats(x) for x in g),
    "figures and words": _mixed,
    "dash": lambda g: " dash ".join(g),
    "hesitation": lambda g: g[0] + ", uh, " + " ".join(g[1:]),
    "words and dash": lambda g: " dash ".join(" ".join(_word(d) for d in x) for x in g),
}


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError


def _cards(rng: random.Random) -> list[list[str]]:
    out = [["4111", "1111", "1111", "1111"], ["5500", "0000", "0000", "0004"],
           ["3782", "822463", "10005"]]
    for prefix, length in [("4", 16), ("51", 16), ("55", 16), ("6011", 16), ("37", 15),
                           ("4", 16), ("52", 16), ("34", 15), ("4", 13)]:
        body = prefix + "".join(rng.choice("0123456789") for _ in range(length - 1 - len(prefix)))
        n = _luhn_complete(body)
        out.append([n[:4], n[4:10], n[10:]] if length == 15 else
                   [n[i:i + 4] for i in range(0, length, 4)])
    return out


def _phones(rng: random.Random) -> list[tuple[str, list[str]]]:
    """(prefix as said, groups): national and international forms."""
    out: list[tuple[str, list[str]]] = [("", ["555", "123", "4567"]), ("", ["07700", "900123"]),
                                        ("+44 ", ["20", "7946", "0958"]),
                                        ("", ["1", "800", "555", "0199"])]
    for _ in range(5):
        area = str(rng.randint(201, 989))
        out.append(("", [area, str(rng.randint(200, 999)), f"{rng.randint(0, 9999):04d}"]))
    out += [("+1 ", ["415", "555", "0132"]), ("+49 ", ["30", "1234", "5678"]),
            ("+33 ", ["1", "23", "45", "67", "89"]), ("+61 ", ["4", "1234", "5678"]),
            ("0049 ", ["89", "636", "48018"]), ("", ["020", "7946", "0018"])]
    return out


def _iban(rng: random.Random, country: str, length: int) -> str:
    bban = "".join(rng.choice("0123456789") for _ in range(length - 4))
    number = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    return f"{country}{98 - number % 97:02d}{bban}"


CONTEXT = {
    "card": ["my card number is {}", "It's {}.", "{}", "Sure, the card is {}, thanks.",
             "Yeah so it's {} and that's it", "Card number: {}.", "OK, I have it here, {}.",
             "the long number on the front is {} I think", "Visa, {}, expiring soon.",
             "Right, it is {}"],
    "phone": ["call me on {}", "My number is {}.", "{}", "You can reach me at {}, anytime.",
              "It's {} and ask for reception", "Phone: {}.", "text me at {} please",
              "the best number is {} I think", "Sure, {}.", "my mobile is {}"],
    "ssn": ["my social is {}", "Social security number {}.", "{}", "It's {}, I believe.",
            "SSN: {}", "sure, my social security number is {} and that's all",
            "the number is {}"],
    "iban": ["my IBAN is {}", "Please pay to {}.", "{}", "The account is {}, thanks.",
             "IBAN: {}", "Sure, it's {} and the name is the same"],
    "account": ["my account number is {}", "The policy number is {}.", "{}",
                "Order number {}, please check it.", "It's {} I think",
                "member ID {} and my name is Smith", "reference {}"],
    "email": ["my email is {}", "It's {}.", "{}", "You can write to {} anytime.",
              "Sure, my address is {} thanks", "Send it to {}, please.",
              "email me at {}", "it's {} and that's it"],
}


def _number_cases(kind: str, values: list[list[str]], rng: random.Random,
                  prefixes: list[str] | None = None, want: int = 130) -> list[Case]:
    cases: list[Case] = []
    seen: set[str] = set()
    names = sorted(RENDERINGS)
    i = 0
    while len(cases) < want:
        k = i % len(values)
        groups = values[k]
        prefix = prefixes[k] if prefixes else ""
        render = RENDERINGS[names[(i * 7 + i // len(values)) % len(names)]]
        spoken = render(groups)
        if prefix.startswith("+") and rng.random() < 0.5:
            spoken = "plus " + _word(prefix[1]) + " " + spoken if len(prefix) == 3 else (
                prefix + spoken)
        elif prefix:
            spoken = prefix + spoken
        template = CONTEXT[kind][rng.randrange(len(CONTEXT[kind]))]
        text = template.format(spoken)
        if text not in seen:
            seen.add(text)
            secret = "".join(groups)
            cases.append(Case(kind, text, secret))
        i += 1
    return cases


def _email_forms(local: str, domain: str) -> list[str]:
    pieces = re.split(r"([._-])", local)
    said = {".": "dot", "_": "underscore", "-": "dash"}
    spoken_local = " ".join(said.get(p, p) for p in pieces)
    spoken_domain = domain.replace(".", " dot ")
    spelled = " ".join(said.get(ch, ch) for ch in local)
    return [
        f"{local}@{domain}",
        f"{local.capitalize()}@{domain.capitalize()}",
        f"{spoken_local} at {spoken_domain}",
        f"{spoken_local.title()} at {spoken_domain}",
        f"{local} at {domain}",
        f"{local.capitalize()} at {domain}",
        f"{spelled} at {spoken_domain}",
        f"{spelled.upper()} at {domain}",
        f"{spoken_local}, at {domain.replace('.', ', dot, ')}",
        f"{local} @ {domain}",
        f"{local}.{domain}",  # "at" lost
        f"{local.capitalize()}.{domain}",
        f"{spoken_local} at {domain}",
        f"{' '.join(re.split(r'[._-]', local))} at {domain}",  # pieces run together
        f"{'-'.join(ch for ch in local if ch.isalnum()).upper()} at {domain}",
    ]


LOCALS = ["john.doe", "jane_smith", "mike-ross", "jsmithers", "sarah.connor", "kimlee",
          "anna.kowalski", "bob_marley", "tess.ortega", "quincy"]
DOMAINS = ["gmail.com", "example.com", "outlook.com", "mail.co.uk", "yahoo.com", "acme.org",
           "proton.io", "uni.edu"]

HAND_WRITTEN = [
    Case("card", "My card number is 4-1-1-1, 1-1-1-1, 1-1-1-1, 1-1-1-1.", "4111111111111111"),
    Case("card", "It's 4111 1111 1111 1111, exp 12 26.", "4111111111111111"),
    Case("card", "Four one one one. One one one one. One one one one. One one one one.",
         "4111111111111111"),
    Case("card", "forty one eleven, eleven eleven, eleven eleven, eleven eleven",
         "4111111111111111"),
    Case("card", "4111, um, 1111, 1111, uh, 1111.", "4111111111111111"),
    Case("card", "Visa 4111 one one one one 1111 one one one one", "4111111111111111"),
    Case("phone", "It's 555-123-4567.", "5551234567"),
    Case("phone", "(555) 123-4567", "5551234567"),
    Case("phone", "Five five five, one two three, four five six seven.", "5551234567"),
    Case("phone", "plus four four, twenty, seven nine four six, oh nine five eight",
         "442079460958"),
    Case("phone", "one eight hundred five five five oh one nine nine", "18005550199"),
    Case("phone", "double five five, one two three, forty five sixty seven", "5551234567"),
    Case("ssn", "My social is 123-45-6789.", "123456789"),
    Case("ssn", "one two three, four five, six seven eight nine", "123456789"),
    Case("ssn", "It's 123 45 6789", "123456789"),
    Case("email", "it's John.do.example.com", "john.doe"),
    Case("email", "Johndoe at gmail.com.", "johndoe"),
    Case("email", "J-O-H-N at gmail.com", "john"),
    Case("email", "my email is john underscore doe at gmail dot com", "john_doe"),
    Case("email", "Sure, jane dot smith, at, example, dot com.", "jane.smith"),
    Case("email", "my email is johndoe gmail.com", "johndoe"),
    Case("email", "My e-mail address is John Doe gmail dot com.", "john.doe"),
    Case("email", "Email: jdoe@acme.co", "jdoe"),
    Case("account", "my passport number is A12345678", "12345678"),
    Case("iban", "GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432"),
    Case("iban", "DE89 3704 0044 0532 0130 00", "DE89370400440532013000"),
    Case("iban", "de89370400440532013000", "DE89370400440532013000"),
    Case("account", "my account is one two three four five six seven eight",
         "12345678"),
    Case("account", "Policy number 8-8-2-0-1-9-4-3.", "88201943"),
]


def positive_cases() -> list[Case]:
    rng = random.Random(20261206)
    cases = list(HAND_WRITTEN)
    cases += _number_cases("card", _cards(rng), rng)
    phones = _phones(rng)
    cases += _number_cases("phone", [g for _, g in phones], rng, [p for p, _ in phones])
    ssns = [[f"{rng.randint(100, 899):03d}", f"{rng.randint(1, 99):02d}",
             f"{rng.randint(1, 9999):04d}"] for _ in range(12)]
    cases += _number_cases("ssn", ssns, rng)
    accounts = [[str(rng.randint(10 ** (n - 1), 10 ** n - 1))] for n in (7, 8, 9, 10, 11, 12)
                for _ in range(2)]
    accounts = [[a[0][:4], a[0][4:]] for a in accounts]
    cases += _number_cases("account", accounts, rng)
    ibans = [_iban(rng, c, n) for c, n in [("GB", 22), ("DE", 22), ("FR", 27), ("ES", 24),
                                            ("NL", 18), ("IT", 27), ("BE", 16), ("CH", 21)]]
    seen: set[str] = set()
    for i in range(300):
        iban = ibans[i % len(ibans)]
        groups = [iban[j:j + 4] for j in range(0, len(iban), 4)]
        form = (i // len(ibans)) % 6
        if form == 0:
            said = " ".join(groups)
        elif form == 1:
            said = iban
        elif form == 2:
            said = iban.lower()
        elif form == 3:  # the country spelled, the rest read as digits
            said = f"{iban[0]} {iban[1]} " + " ".join(
                _word(d) if d.isdigit() else d for d in iban[2:])
        elif form == 4:
            said = " ".join(groups[:1]) + " " + RENDERINGS["words in groups"](
                [g for g in groups[1:]])
        else:
            said = "-".join(groups)
        text = CONTEXT["iban"][rng.randrange(len(CONTEXT["iban"]))].format(said)
        if text not in seen and len(seen) < 130:
            seen.add(text)
            cases.append(Case("iban", text, iban))
    n = 0
    for local in LOCALS:
        for domain in DOMAINS[:2] if n % 2 else DOMAINS[2:4]:
            for form in dict.fromkeys(_email_forms(local, domain)):  # once each
                template = CONTEXT["email"][n % len(CONTEXT["email"])]
                cases.append(Case("email", template.format(form), local))
                n += 1
    return cases


def _number_digits(text: str) -> str:
    """Every digit left in ``text``, figures and number words, in order."""
    out: list[str] = []
    for m in TOKEN.finditer(text):
        tok = m.group()
        word = tok.casefold()
        if tok.isdecimal():
            out.append(tok)
        elif any(ch.isdecimal() for ch in tok):
            out.append("".join(ch for ch in tok if ch.isdecimal()))
        elif word in DIGITS:
            out.append(DIGITS[word])
        elif word in TEENS:
            out.append(TEENS[word])
        elif word in TENS:
            out.append(TENS[word])
    return "".join(out)


def leaked_digits(text: str, secret: str, run: int = 4) -> bool:
    digits = "".join(ch for ch in secret if ch.isdecimal())
    left = _number_digits(text)
    return any(digits[i:i + run] in left for i in range(len(digits) - run + 1))


def _pieces(local: str) -> list[str]:
    return [p for p in re.split(r"[._-]", local.casefold()) if len(p) >= 3]


def leaked_local(text: str, local: str) -> bool:
    clean = text.casefold()
    for placeholder in ("[email]", "[web address]"):
        clean = clean.replace(placeholder, " ")
    words = set(re.findall(r"[^\W_]+", clean))
    letters = "".join(re.findall(r"(?<![^\W_])[^\W_](?![^\W_])", clean))  # spelled
    return any(p in words or p in letters for p in _pieces(local))


def leaks(case: Case, text: str) -> bool:
    if case.kind == "email":
        return leaked_local(text, case.secret)
    return leaked_digits(text, case.secret)


def leaks_anything(case: Case, text: str) -> bool:
    """The read-ahead's bar: no digit of the number at all, no piece of the address."""
    if case.kind == "email":
        return leaked_local(text, case.secret)
    return bool(_number_digits(text))


def prefixes(text: str) -> list[str]:
    """The utterance as a partial transcript at each word boundary."""
    words = text.split(" ")
    return [" ".join(words[:k]) for k in range(1, len(words) + 1)]


NEGATIVE = [
    # times, prices, dates, quantities, years
    "Let's meet at 5:30.", "A table for 2 people at 7 tonight.", "See you at 10:45 tomorrow.",
    "It's 3 p.m. here.", "The meeting is from 9 to 5.", "It costs $1,250,000.",
    "The order was $12,345.67 in total.", "about 1,500,000 dollars", "It's £19.99 a month.",
    "That's 45 euros and 50 cents.", "I paid 1200 dollars for it.", "It's 2.5 million.",
    "on 12-25-2024, or 2024-12-25", "My birthday is 03/14/1985.", "It was in 2024.",
    "Between 2019 and 2023 I lived there.", "The years 2020, 2021 were hard.",
    "I was born in nineteen eighty five.", "In the 1990s.", "Go forward 10 meters.",
    "We have 3 kids, 2 dogs and 1 cat.", "I need one or two, maybe three.",
    "About 250 grams of flour and 2 eggs.", "It weighs 75 kilos.", "Add 3 cups, then 1 more.",
    "The 10 of clubs.", "33, 4, 692", "Pi is 3.14159265.", "It's 98.6 degrees.",
    "a score of 7 to 3", "He is 42 years old.", "Chapter 11, page 304.",
    # addresses, rooms, flights, routes
    "221B Baker Street", "I live at 42 Wallaby Way, Sydney.", "Room 1204, floor 3.",
    "flight 370", "Flight BA 2490 leaves at 6.", "Gate 23B.", "Route 66 is long.",
    "Take the 5 train to 125th Street.", "Platform 9 and three quarters.",
    "My zip code is 90210.", "Apartment 4, 1600 Pennsylvania Avenue.",
    "Interstate 95 north.", "Seat 14C, row 14.", "Order 66.",
    # ordinary sentences with at, dot, oh, one
    "I'm at home.", "I'll be at work by 9. See you.", "Look at this dot, it's on the dot.",
    "Meet me at the station.", "Someone phoned at ten to four.", "Oh, okay, one more thing.",
    "Oh no, not again.", "Connect the dots.", "The dot com era is over.",
    "She's at the doctor at noon.", "Where are you at?", "Look at that!",
    "I'm good at maths.", "He arrived at last.", "At least it works.", "Dr. Smith is in.",
    "Mr. and Mrs. Jones.", "e.g. the first one", "It's the U.S. office.", "Version 2.0 is out.",
    "Open report.pdf please.", "I use Node.js at work.", "It's a polka dot dress.",
    "The one on the left.", "No one was there.", "It's one of those days.",
    "I'm at 50 percent.", "We're at level 3.", "At 8, at 9 and at 10.",
    "Double check it.", "Triple A batteries.", "Take five.", "I'm twenty five.",
    "It's a quarter to eight.", "Half past nine.", "Ten, nine, eight, go!",
    "Hello, how are you?", "Can you help me with my booking?", "I'd like to cancel.",
    "What's the weather like?", "Thanks, that's all.", "Could you repeat that?",
    "My name is John Smith.", "I'm calling about my order.", "Yes, that's correct.",
    "I'll send an email later.", "My email address changed.", "Let me find my card.",
    "My number changed last week.", "The card expires in March.", "I have two questions.",
    "Is it open on Sunday?", "Four score and seven years ago.", "It's 7 o'clock.",
    "The 3 of us left at 11.", "Call 911!", "I am at home. Com on, let's go.",
    "We're at work. Co-workers too.", "My PIN is 1234.",
]
