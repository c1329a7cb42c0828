"""Personal data is redacted from the caller's words before any LLM, and from log lines."""

from __future__ import annotations

import json
import logging
import random
import time

import pytest

from rejoinder.config import load_config
from rejoinder.core.redact import (
    luhn_valid,
    might_hold_personal_data,
    read_ahead_text,
    redact,
)
from rejoinder.observability.logs import RedactFilter, setup_logging
from rejoinder.providers.base import ChatMessage
from rejoinder.providers.factory import build_stack
from rejoinder.testing.fakes import FakeLLM

CARD_WORDS = "four one one one one one one one one one one one one one one one"

REDACTED = [
    # card numbers: figures grouped or not (Luhn valid), spoken, one figure at a time
    ("my card is 4111 1111 1111 1111.", "my card is [card number]."),
    ("4111-1111-1111-1111", "[card number]"),
    ("It's 4111111111111111, expiring next year", "It's [card number], expiring next year"),
    ("Mastercard 5500 0000 0000 0004 please", "Mastercard [card number] please"),
    ("amex 3782 822463 10005", "amex [card number]"),
    (CARD_WORDS, "[card number]"),
    ("Four, one, one, one, one, one, one, one, one, one, one, one, one, one, one, one.",
     "[card number]."),
    ("4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", "[card number]"),
    ("it is 4111 1111 one one one one 1111", "it is [card number]"),
    ("four one one one one one one one one one one one one one one two", "[card number]"),
    # phone numbers
    ("call me on 555-123-4567 please", "call me on [phone number] please"),
    ("(555) 123-4567", "[phone number]"),
    ("+1 555 123 4567", "[phone number]"),
    ("+44 20 7946 0958.", "[phone number]."),
    ("555 123 4567", "[phone number]"),
    ("It's 555-1234.", "It's [phone number]."),
    ("07700 900123", "[phone number]"),
    ("my number is five five five one two three four five six seven",
     "my number is [phone number]"),
    ("Five five five, oh one two, three four five six.", "[phone number]."),
    ("five five five 123 4567", "[phone number]"),
    ("double five one two three four five", "[phone number]"),
    ("Oh, 555-123-4567.", "Oh, [phone number]."),
    # emails, written and spoken
    ("john.doe@example.com", "[email]"),
    ("Email me at John.Doe@Example.com, thanks.", "Email me at [email], thanks."),
    ("it's john dot doe at example dot com", "it's [email]"),
    ("john at example.com", "[email]"),
    ("Jane underscore Smith at mail dot co dot uk.", "[email]."),
    ("my email is j.smith42 at gmail dot com", "my email is [email]"),
    ("write to john@example dot com", "write to [email]"),
    # social security numbers, IBANs, other long digit runs
    ("my social is 123-45-6789", "my social is [social security number]"),
    ("it's 123 45 6789", "it's [social security number]"),
    ("GB82 WEST 1234 5698 7654 32", "[iban]"),
    ("pay to DE89370400440532013000 today", "pay to [iban] today"),
    ("my account number is 12345678", "my account number is [number]"),
    # what a recogniser writes for digits read one by one, and number words
    ("My card number is 4-1-1-1, 1-1-1-1, 1-1-1-1, 1-1-1-1.", "My card number is [card number]."),
    ("four-one-one-one one-one-one-one one-one-one-one one-one-one-one", "[card number]"),
    ("forty one eleven, eleven eleven, eleven eleven, eleven eleven", "[card number]"),
    ("4. 1. 1. 1. 1. 1. 1.", "[phone number]."),
    ("double four, one two, triple seven, oh", "[number]"),
    ("one eight hundred five five five one two one two", "[phone number]"),
    ("It's 4111, uh, 1111, um, 1111 1111.", "It's [card number]."),
    ("five five five dash one two three dash four five six seven", "[phone number]"),
    ("+44 (0) 20 7946 0958", "[phone number]"),
    ("0044 20 7946 0958", "[phone number]"),
    ("my social is one two three, four five, six seven eight nine",
     "my social is [social security number]"),
    ("555.123.4567", "[phone number]"),
    # emails as a recogniser writes them, with or without "@" or "at"
    ("John.do.example.com", "[email]"),
    ("j o h n at gmail dot com", "[email]"),
    ("J-O-H-N at gmail.com", "[email]"),
    ("john underscore doe at gmail dot com", "[email]"),
    ("reach me at gmail.com", "reach me [email]"),
    ("write to Jane at example.com", "write to [email]"),
    ("John Doe at gmail.com.", "[email]."),
    ("john, dot, doe, at, example, dot, com", "[email]"),
    ("john.doe @ example.com", "[email]"),
    ("write to me at john dot doe at example dot com", "write to me at [email]"),
    # a bare domain: privacy first (a private domain is personal, and a dropped "at"
    # makes one of an email)
    ("We're at example.com's office.", "We're [email]'s office."),
    ("go to example dot co dot uk", "go to [web address]"),
    ("see www.example.com", "see [web address]"),
    ("it's on example.org", "it's on [web address]"),
    ("my email is johndoe gmail.com", "my email is [email]"),  # the "at" lost
    ("My email address changed, see example.org",
     "My email address changed, see [web address]"),
    ("My e-mail address is John Doe gmail dot com.", "My e-mail address is [email]."),
    # an id of letters and 7 digits or more
    ("my passport is A1234567", "my passport is [number]"),
    ("tracking 1Z999AA10123456784", "tracking [number]"),
    # an IBAN misheard (check fails) or grouped with hyphens
    ("GB82 WEST 1234 5698 7654 33", "[iban]"),
    # a 16-figure number that fails Luhn is still a long run: redacted, not called a card
    ("4111 1111 1111 1112", "[number]"),
    # the rest of the text stays byte for byte
    ("Hi!  My NUMBER is 555-123-4567 , ok?\n", "Hi!  My NUMBER is [phone number] , ok?\n"),
    ("card 4111 1111 1111 1111 and phone 555-123-4567, mail a@b.org.",
     "card [card number] and phone [phone number], mail [email]."),
]

KEPT = [
    "Let's meet at 5:30.",
    "A table for 2 people at 7 tonight.",
    "Go forward 10 meters.",
    "The 10 of clubs.",
    "33, 4, 692",
    "It was in 2024.",
    "It costs $1,250,000.",
    "The order was $12,345.67 in total.",
    "about 1,500,000 dollars",
    "on 12-25-2024, or 2024-12-25",
    "I'm at home.",
    "I'll be at work by 9. See you.",
    "Look at this dot, it's on the dot.",
    "Meet me at the station.",
    "the dot com era",
    "I am at home. Com on, let's go.",
    "We're at work. Co-workers too.",
    "Between 9 and 5, 7 days a week.",
    "221B Baker Street",
    "flight 370",
    "It was about 1.5 million, or 2,300 thousand.",
    "Pi is 3.14159265.",
    "Room 1204, floor 3.",
    "Oh, okay, one more thing.",
    "I need one or two, maybe three.",
    "We have 3 kids, 2 dogs and 1 cat.",
    "Someone phoned at ten to four.",
    "",
]


@pytest.mark.parametrize("text, expected", REDACTED)
def test_personal_data_is_replaced_by_a_placeholder(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_speech_is_kept_as_it_is(text):
    assert redact(text) == text


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


def test_redaction_is_deterministic_and_idempotent():
    text = "I'm john dot doe at example dot com, 555 123 4567, card " + CARD_WORDS
    once = redact(text)
    assert once == redact(text) == redact(once)
    assert not might_hold_personal_data(once)


def test_any_text_is_answered_and_redacting_again_changes_nothing():
    rng = random.Random(7)
    pieces = [*"0123456789 -,.()+@$x\n", "one ", "oh ", "oh, ", "double ", "triple ", "dot ",
              " at ", "com", "GB82", "\u017f", "\u212a", "\u0664", "\u00b2", "\u00e9"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        once = redact(text)
        assert redact(once) == once
    # letters that only case folding matches: "\u017fix" is "six", "\u212a" is "K"
    assert redact("\u017fix \u017fix \u017fix one two three four") == "[phone number]"
    assert redact("AB12 \u212a\u212a\u212a\u212a 1234") == "AB12 \u212a\u212a\u212a\u212a 1234"


@pytest.mark.parametrize("text", [
    "1 " * 50_000,
    "1" * 100_000 + "x",
    "5-" * 50_000,
    "1, " * 33_000,
    "(1) " * 25_000,
    "a." * 50_000,
    "a dot " * 20_000,
    "x at " * 20_000 + "1234567",
    "x at " + "b dot " * 20_000,
    "a@" * 50_000,
    "word-" * 20_000 + "@",
    "GB82" + "A" * 100_000,
    "AB12 " * 20_000,
    "double " * 20_000 + "five",
    "j, dot, " * 12_000,  # a spelled address that never ends
    "x at y." * 14_000,
    "a b, " * 20_000,
    "four " * 20_000,
    "forty one, " * 9_000,
])
def test_long_adversarial_input_finishes_fast(text):
    start = time.perf_counter()
    redact(text)
    assert time.perf_counter() - start < 1.0


HISTORY = [
    ChatMessage("system", "Be brief. Support line: 555-000-1111."),
    ChatMessage("user", "My card is 4111 1111 1111 1111."),
    ChatMessage("assistant", "Thanks, I've noted 555 123 4567.", interrupted=True),
    ChatMessage("user", "And my email is john dot doe at example dot com"),
]
REDACTED_HISTORY = [
    HISTORY[0],
    ChatMessage("user", "My card is [card number]."),
    HISTORY[2],
    ChatMessage("user", "And my email is [email]"),
]


async def test_the_llm_receives_only_redacted_user_text():
    llm = FakeLLM(["Sure."])
    original = list(HISTORY)
    assert [d async for d in llm.stream(HISTORY)] == ["Sure."]
    await llm.prefill(HISTORY[:2] + [ChatMessage("user", "five five five one two three four")])
    assert llm.requests == [REDACTED_HISTORY]  # system and assistant text pass unchanged
    assert llm.prefills == [REDACTED_HISTORY[:2] + [ChatMessage("user", "[phone number]")]]
    assert original == HISTORY  # the conversation itself keeps the caller's words


async def test_switched_off_the_llm_receives_the_raw_words():
    llm = FakeLLM(["Sure."])
    llm.redact = False
    assert [d async for d in llm.stream(HISTORY)] == ["Sure."]
    await llm.prefill(HISTORY[:2])
    assert llm.requests == [HISTORY] and llm.prefills == [HISTORY[:2]]


async def test_the_same_history_makes_the_same_prompt_every_turn():
    llm = FakeLLM(["Sure."])
    async for _ in llm.stream(HISTORY[:2]):
        pass
    async for _ in llm.stream([*HISTORY[:2], ChatMessage("assistant", "Sure."), HISTORY[3]]):
        pass
    first, second = llm.requests
    assert second[:len(first)] == first


def test_the_option_reaches_the_llm():
    assert load_config(None, {}).llm.redact is True
    assert build_stack(load_config(None, {}), kind="fake").llm.redact is True
    off = load_config(None, {"REJOINDER_LLM__REDACT": "false"})
    assert off.llm.redact is False
    assert build_stack(off, kind="fake").llm.redact is False


def test_a_log_line_with_personal_data_is_redacted(capsys):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    extra = {"event": "turn", "call_id": "123456789012", "error": "mail a.b@example.com"}
    try:
        setup_logging("info", json_lines=True)
        log = logging.getLogger("rejoinder.test")
        log.info("caller said %s", "my card is 4111 1111 1111 1111", extra={"record": extra})
        log.info("turn %d of %s", 3, "123456789012")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["msg"] == "caller said my card is [card number]"
    assert lines[0]["error"] == "mail [email]"
    assert lines[0]["call_id"] == "123456789012"  # the server's own id, kept for joins
    assert extra["error"] == "mail a.b@example.com"  # the caller's dict is not changed
    assert lines[1]["msg"] == "turn 3 of [number]"


@pytest.mark.parametrize("json_lines", [True, False])
def test_a_call_id_given_to_a_log_line_is_kept_whole(capsys, json_lines):
    call_id = "4e7fd4774cc0485b8c7dd43f405f92d6"  # digits enough to pass for a number
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("info", json_lines=json_lines)
        logging.getLogger("rejoinder.test").info("record deleted", extra={"call_id": call_id})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    if json_lines:
        assert json.loads(err)["call_id"] == call_id
    else:
        assert f"[{call_id}] record deleted" in err


@pytest.mark.parametrize("json_lines", [True, False])
def test_a_traceback_with_personal_data_is_redacted(capsys, json_lines):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("info", json_lines=json_lines)
        try:
            raise ValueError("could not parse 'call me at 555 123 4567'")
        except ValueError:
            logging.getLogger("rejoinder.test").exception("turn failed")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert "ValueError: could not parse 'call me at [phone number]'" in (
        json.loads(err)["exc"] if json_lines else err)
    assert "555" not in err


def test_a_log_line_with_nothing_to_redact_is_left_alone():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "turn %d %s", (3, "completed"),
                               None)
    assert RedactFilter().filter(record)
    assert (record.msg, record.args) == ("turn %d %s", (3, "completed"))
    # a call with bad arguments is logging's own error to report, not a crash here
    bad = logging.LogRecord("x", logging.INFO, __file__, 1, "turn %d", ("three",), None)
    assert RedactFilter().filter(bad)


@pytest.mark.parametrize(("text", "sent"), [
    ("go forward 10", ""),  # the number, and the two words before it, are held back
    ("My card number is 4-1-1-1", "My card"),
    ("My card number is 4-1-1-1, 1-1 and then", "My card"),
    ("my card is four one one", "my"),
    ("my card is forty one", "my"),
    ("call me on double", "call"),
    ("my email is john dot", ""),  # after "email": nothing until it is redacted
    ("you can write to john dot doe at", "you can"),
    ("reach me at john doe", ""),
    ("I said reach me at john doe", "I"),
    ("the letters are j o h", "the"),
    ("my card is 4111 1111 1111 1111 and the expiry is", "my card is [card number] and the"),
    ("I want to book a table tonight please", "I want to book a table"),
    ("I'm at home and I want to go out", "I'm at home and I want to"),
    ("Oh, okay so", "Oh"),  # "Oh," is no zero
    ("33, 4, 692", ""),
    ("", ""),
])
def test_only_what_cannot_be_part_of_unfinished_personal_data_is_read_ahead(
        text: str, sent: str) -> None:
    assert read_ahead_text(text) == sent
