"""A fixed tool-calling test set: callers of a salon's booking line, as Whisper writes them.

The tools are the booking agent's five (``find_slots``, ``book``, ``reschedule``, ``cancel``,
``lookup_booking``): :func:`agent_tools`, the real ones, or :func:`booking_tools`, the same
calls written here with the service as an ``enum`` (what a schema can say to help). Each
case is one caller turn and what a good agent does with it: one tool with its arguments, or no
tool at all (chit-chat, thanks, questions no tool answers).

Three parts, written separately and in different styles: ``tune`` (short, direct requests;
the intent stage's cue phrases were adjusted against these only), ``held_out`` (rambling,
with fillers and indirect phrasings; never used for adjusting anything, but written before
the argument rules by the same hand) and ``fresh`` (written after the cue phrases and the
rules were settled, scored as it came). Score all three.

Arguments are compared as :func:`canonical` makes them: case and spacing ignored, a day
without "on"/"this", a clock time as ``HH:MM`` (an hour from 1 to 7 with no "a.m." is the
afternoon: a salon's hours), a booking reference without spaces or hyphens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rejoinder.tools.base import Tool

SERVICES = ["haircut", "beard trim", "colour", "manicure", "massage"]

_SERVICE = {"type": "string", "enum": SERVICES, "description": "the service"}
_DAY = {"type": "string",
        "description": "the day as the caller says it: today, tomorrow or a weekday"}
_TIME = {"type": "string", "description": "the time of day, 24-hour HH:MM"}
_REF = {"type": "string", "description": "the booking reference, like BK-26DEC06-003"}
_NAME = {"type": "string", "description": "the caller's full name"}


async def _nothing(arguments: dict[str, Any]) -> dict[str, Any]:
    return {}


def agent_tools() -> list[Tool]:
    """The booking agent's own tools, as it ships them (their schemas: nothing is invoked)."""
    from rejoinder.agents.booking.tools import TOOLS

    return list(TOOLS)


def booking_tools() -> list[Tool]:
    """The booking calls with the service as an enum (schemas only: ``invoke`` does
    nothing)."""
    def obj(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {"type": "object", "properties": props, "required": required}

    return [
        Tool("find_slots", "Find free appointment times for a service on a day.",
             obj({"service": _SERVICE, "day": _DAY}, ["service"]), _nothing,
             side_effects=False),
        Tool("book", "Book an appointment for a service at a day and time.",
             obj({"service": _SERVICE, "day": _DAY, "time": _TIME, "name": _NAME},
                 ["service", "day", "time"]), _nothing),
        Tool("reschedule", "Move an existing booking to another day or time.",
             obj({"reference": _REF, "day": _DAY, "time": _TIME}, ["reference"]), _nothing),
        Tool("cancel", "Cancel an existing booking.", obj({"reference": _REF}, ["reference"]),
             _nothing),
        Tool("lookup_booking", "Look up an existing booking by its reference or the name.",
             obj({"reference": _REF, "name": _NAME}, []), _nothing, side_effects=False),
    ]


@dataclass(frozen=True)
class Case:
    text: str
    tool: str | None = None  # None: no tool, the agent just answers
    args: dict[str, str] = field(default_factory=dict)


def _c(text: str, tool: str | None = None, **args: str) -> Case:
    return Case(text, tool, args)


TUNE: list[Case] = [
    _c("I'd like to book a haircut tomorrow at 3.", "book",
       service="haircut", day="tomorrow", time="15:00"),
    _c("Can I book a beard trim on Friday at 10 a.m.?", "book",
       service="beard trim", day="friday", time="10:00"),
    _c("Book me a massage for Monday at 2 p.m., please.", "book",
       service="massage", day="monday", time="14:00"),
    _c("I want a manicure on Saturday at 11.", "book",
       service="manicure", day="saturday", time="11:00"),
    _c("Could I get a colour tomorrow at 4.30?", "book",
       service="colour", day="tomorrow", time="16:30"),
    _c("Hi, this is Maria Lopez. I'd like to book a haircut on Thursday at 9.", "book",
       service="haircut", day="thursday", time="09:00", name="Maria Lopez"),
    _c("Book a manicure for Sunday at 1 p.m. The name is Lee Chan.", "book",
       service="manicure", day="sunday", time="13:00", name="Lee Chan"),
    _c("Can I have a massage today at 6?", "book",
       service="massage", day="today", time="18:00"),
    _c("Do you have anything free on Wednesday for a haircut?", "find_slots",
       service="haircut", day="wednesday"),
    _c("What times are available for a massage tomorrow?", "find_slots",
       service="massage", day="tomorrow"),
    _c("Are there any slots for a manicure on Friday?", "find_slots",
       service="manicure", day="friday"),
    _c("When can I come in for a beard trim today?", "find_slots",
       service="beard trim", day="today"),
    _c("Is there any availability for colour on Tuesday?", "find_slots",
       service="colour", day="tuesday"),
    _c("Please cancel my booking BK-26DEC06-003.", "cancel", reference="BK-26DEC06-003"),
    _c("I can't make it, cancel BK-26DEC07-001, please.", "cancel",
       reference="BK-26DEC07-001"),
    _c("I need to cancel my appointment. The reference is BK-26DEC08-002.", "cancel",
       reference="BK-26DEC08-002"),
    _c("Can you move my appointment BK-26DEC06-004 to Friday at 2 p.m.?", "reschedule",
       reference="BK-26DEC06-004", day="friday", time="14:00"),
    _c("I want to reschedule BK-26DEC09-001 to tomorrow at 10.", "reschedule",
       reference="BK-26DEC09-001", day="tomorrow", time="10:00"),
    _c("Please change my booking BK-26DEC10-005 to Monday at 3.", "reschedule",
       reference="BK-26DEC10-005", day="monday", time="15:00"),
    _c("I'd rather come on Thursday at 5 instead, booking BK-26DEC11-002.", "reschedule",
       reference="BK-26DEC11-002", day="thursday", time="17:00"),
    _c("When is my appointment? My name is John Smith.", "lookup_booking", name="John Smith"),
    _c("Can you check my booking BK-26DEC06-002?", "lookup_booking",
       reference="BK-26DEC06-002"),
    _c("What time is my haircut tomorrow? It's under Anna Berg.", "lookup_booking",
       name="Anna Berg"),
    _c("Hello."),
    _c("How are you today?"),
    _c("Thank you, that's all."),
    _c("What are your opening hours?"),
    _c("How much is a haircut?"),
    _c("Where are you located?"),
    _c("Okay, goodbye."),
    _c("Do you do beard trims?"),
    _c("Yes, that's right."),
]

HELD_OUT: list[Case] = [
    _c("Yeah, hi, um, I was wondering if I could get a haircut, maybe tomorrow around 3?",
       "book", service="haircut", day="tomorrow", time="15:00"),
    _c("So I'd like to, uh, make an appointment for a massage on Friday at 1.", "book",
       service="massage", day="friday", time="13:00"),
    _c("Hi there, my name's Tom Baker and I need a beard trim Monday at 9 in the morning.",
       "book", service="beard trim", day="monday", time="09:00", name="Tom Baker"),
    _c("Um, could you put me down for a manicure on Wednesday at 2?", "book",
       service="manicure", day="wednesday", time="14:00"),
    _c("I'd love to get my hair coloured, uh, Saturday at 10 if that works.", "book",
       service="colour", day="saturday", time="10:00"),
    _c("My name is Priya Patel, and I wanna book a massage on Sunday at noon.", "book",
       service="massage", day="sunday", time="12:00", name="Priya Patel"),
    _c("Okay so, what have you got for a haircut on Thursday?", "find_slots",
       service="haircut", day="thursday"),
    _c("Is there, um, anything open tomorrow for a massage?", "find_slots",
       service="massage", day="tomorrow"),
    _c("Do you have any space on Tuesday for a manicure?", "find_slots",
       service="manicure", day="tuesday"),
    _c("When's the earliest I could get a beard trim today?", "find_slots",
       service="beard trim", day="today"),
    _c("I'm free on Friday, what times do you have for colour?", "find_slots",
       service="colour", day="friday"),
    _c("Are there any free spots for a beard trim on Saturday?", "find_slots",
       service="beard trim", day="saturday"),
    _c("Hi, yeah, I need to cancel, the booking is BK-26DEC12-003.", "cancel",
       reference="BK-26DEC12-003"),
    _c("Something came up so I won't make it, can you cancel BK-26DEC06-005?", "cancel",
       reference="BK-26DEC06-005"),
    _c("Please call off my appointment, reference BK-26DEC13-001.", "cancel",
       reference="BK-26DEC13-001"),
    _c("Uh, I've got a booking, BK-26DEC14-002, and I'd like to push it to Saturday at 11.",
       "reschedule", reference="BK-26DEC14-002", day="saturday", time="11:00"),
    _c("Could we move BK-26DEC06-001 to Wednesday at 4 instead?", "reschedule",
       reference="BK-26DEC06-001", day="wednesday", time="16:00"),
    _c("Can I change the time of BK-26DEC15-003 to 12.30 tomorrow?", "reschedule",
       reference="BK-26DEC15-003", day="tomorrow", time="12:30"),
    _c("Uh, reschedule BK-26DEC17-002 please, to Monday at 8.", "reschedule",
       reference="BK-26DEC17-002", day="monday", time="08:00"),
    _c("Hi, just checking, when's my appointment? It's under Sara Kim.", "lookup_booking",
       name="Sara Kim"),
    _c("Do I have a booking this week? Name is David Green.", "lookup_booking",
       name="David Green"),
    _c("Can you confirm my booking, it's BK-26DEC16-004?", "lookup_booking",
       reference="BK-26DEC16-004"),
    _c("Could you look up my booking? BK-26DEC18-001.", "lookup_booking",
       reference="BK-26DEC18-001"),
    _c("Oh, hi! Nice weather today, isn't it?"),
    _c("Sorry, can you say that again?"),
    _c("Do you take credit cards?"),
    _c("Okay, great, thanks so much."),
    _c("No, that's everything, bye."),
    _c("Um, who am I speaking with?"),
    _c("Is parking available near you?"),
    _c("I have a question about prices."),
    _c("Hmm, let me think about it."),
]

# Written after the cue phrases and the argument rules were settled, and scored as it came.
FRESH: list[Case] = [
    _c("Hey, can you fit me in for a massage Thursday, say half past two?", "book",
       service="massage", day="thursday", time="14:30"),
    _c("Id like to schedule a manicure for tomorrow at 11:15.", "book",
       service="manicure", day="tomorrow", time="11:15"),
    _c("Put me in for a beard trim on Wednesday at 12, my name's Ben Ode.", "book",
       service="beard trim", day="wednesday", time="12:00", name="Ben Ode"),
    _c("Morning! Any chance of a haircut on Monday afternoon?", "find_slots",
       service="haircut", day="monday"),
    _c("What's free for beard trims on Sunday?", "find_slots",
       service="beard trim", day="sunday"),
    _c("Yeah, I need to cancel my massage, reference BK-26DEC19-004.", "cancel",
       reference="BK-26DEC19-004"),
    _c("I won't be able to come in on Friday, can you cancel booking BK-26DEC20-001?",
       "cancel", reference="BK-26DEC20-001"),
    _c("Could I move BK-26DEC21-003 to next Tuesday at 3:30?", "reschedule",
       reference="BK-26DEC21-003", day="next tuesday", time="15:30"),
    _c("Can you bump my appointment BK-26DEC22-002 to 5 p.m. on Saturday?", "reschedule",
       reference="BK-26DEC22-002", day="saturday", time="17:00"),
    _c("Hi, it's Olga Ivanova, when did I book my colour for?", "lookup_booking",
       name="Olga Ivanova"),
    _c("Could you tell me the details of my booking BK-26DEC23-005?", "lookup_booking",
       reference="BK-26DEC23-005"),
    _c("Great, see you then."),
    _c("Can I bring my kid along?"),
    _c("Do you sell gift cards?"),
    _c("Uh huh, okay."),
    _c("What's your phone number?"),
]

PARTS: dict[str, list[Case]] = {"tune": TUNE, "held_out": HELD_OUT, "fresh": FRESH}

_HOUR = re.compile(r"(\d{1,2})(?:[:.](\d{2}))?")


def canonical(key: str, value: Any) -> str:
    """``value`` of argument ``key`` as the scoring compares it."""
    text = " ".join(str(value).lower().split())
    if key == "time":
        return _clock(text)
    if key == "day":
        return re.sub(r"^(on|this)\s+", "", text)
    if key == "reference":
        return re.sub(r"[^0-9a-z]", "", text)
    if key == "service":
        return text.replace("color", "colour")
    return text


def _clock(text: str) -> str:
    if "noon" in text or "midday" in text:
        return "12:00"
    m = _HOUR.search(text)
    if m is None:
        return text
    hour, minute = int(m.group(1)), int(m.group(2) or 0)
    after = text[m.end():]
    if re.search(r"p\.?\s?m|afternoon|evening", after) and hour < 12:
        hour += 12
    elif not re.search(r"a\.?\s?m|morning", after) and 1 <= hour <= 7:
        hour += 12  # "at 3" at a salon is the afternoon
    return f"{hour:02d}:{minute:02d}"


def args_match(expected: dict[str, str], got: dict[str, Any]) -> bool:
    """Exactly the expected arguments (canonical), no more: an empty value counts as absent."""
    given = {k: v for k, v in got.items() if v not in ("", None)}
    if set(given) != set(expected):
        return False
    return all(canonical(k, given[k]) == canonical(k, v) for k, v in expected.items())
