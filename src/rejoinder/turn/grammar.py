"""Where an English sentence cannot end: the grammar behind the words check.

The words check (``TurnOptions.is_unfinished``) reads the transcript taken at a pause. Its
last word says whether the caller can have finished: some words need something after them
that has not come. The classes below are closed (their members are the whole class), and
what decides is what each class needs next and whether English lets that go unsaid:

- **Never the last word**, a question's "?" included (nothing moves out from after them):
  determiners, which need a noun ("the", "my", "every"); coordinators, which need a second
  conjunct ("and", "but"); subordinators and complementisers, which need a clause
  ("because", "if", "whether", "than"); and a contracted auxiliary, which needs its verb
  phrase and, reduced, can never stand before an ellipsis ("Yes, it is." but never "Yes,
  it's."; "we'll", "I'm", "that's").
- **Not the last word of a statement** (``TurnOptions.unfinished_words``): prepositions,
  nominative pronouns, hesitations. A question may end on them ("Who are you with?",
  "Where are you from?": the object moved to the front).
- **Auxiliaries and copulas** ("is", "was", "will", "can", "have", "don't") need a verb
  phrase or a predicate, which English leaves unsaid only in a question ("Is it?", "Who
  is?") or after a pronoun subject (ellipsis: "Yes, it is.", "I think we can.", "...than he
  was.", "I think so, that is."), or where a wh-word inside the sentence left its place
  empty ("Remind me what the policy is.", "...how much there might be."), and only where
  the sentence closes there: from a recogniser that punctuates, a closing mark. So one is
  the last word of a finished sentence only after "?", or closed after a subject pronoun
  (past other auxiliaries, "not" and adverbs: "it could have been", "it really is") or
  an embedded wh-word; "WordPress is", "My order number is.", "What I really want to know
  is." (a wh-word that starts the sentence is its subject's) are unfinished. After a
  determiner or a preposition the word is a noun ("a can", "in May"), and decides nothing.
- **"that"** is a complementiser, which needs its clause, after a copula or a word that
  takes a clause ("The thing is that", "so that", "now that"); elsewhere it can be a
  pronoun ("I'd like that.").
"""

from __future__ import annotations

import re
from collections.abc import Set

__all__ = ["AUXILIARIES", "COORDINATORS", "DETERMINERS", "FUNCTION_WORDS", "PREPOSITIONS",
           "SUBJECTS", "SUBORDINATORS", "open_ending", "same_words", "words"]

DETERMINERS = frozenset(("a", "an", "the", "every", "my", "your", "our", "their", "its"))
COORDINATORS = frozenset(("and", "or", "nor", "but"))
SUBORDINATORS = frozenset(("because", "if", "unless", "although", "whether", "than", "until",
                           "whereas", "while"))
PREPOSITIONS = frozenset(("to", "of", "in", "on", "at", "for", "with", "from", "by", "about",
                          "into", "onto", "as", "like"))
# Pronouns that can be the subject before an elided verb phrase ("it is.", "so do I.").
SUBJECTS = frozenset(("i", "you", "he", "she", "it", "we", "they", "this", "that", "these",
                      "those", "there", "one"))
NOMINATIVE = frozenset(("i", "we", "he", "she", "they"))  # never an object: "than I."
HESITATIONS = frozenset(("um", "uh", "er", "erm"))
AUXILIARIES = frozenset((
    "am", "is", "are", "was", "were", "be", "been", "being", "do", "does", "did", "have",
    "has", "had", "will", "would", "shall", "should", "can", "could", "may", "might", "must",
    "cannot"))
# Contracted auxiliaries ("it's", "we'll"), after a pronoun or a wh-word; a noun's "'s" is
# its possessive ("John's") and decides nothing.
_CONTRACTED = re.compile(
    r"^(i|you|he|she|it|we|they|that|there|here|what|who|where|how|when|why|this|let)"
    r"'(m|re|s|ve|ll|d)$")
# Words between a subject and its auxiliary: "it really is", "we never have".
_ADVERBS = frozenset(("not", "never", "always", "still", "just", "also", "even", "already",
                      "sure", "too"))
# After these, "that" is a complementiser: its clause must follow ("so that", "now that").
_BEFORE_COMPLEMENTISER = frozenset(("is", "was", "are", "were", "be", "so", "such", "now",
                                    "except", "given", "provided", "assuming"))
# A wh-word inside a sentence starts a clause whose gap an auxiliary may end on.
_WH = frozenset(("what", "where", "who", "whom", "which", "how", "why", "whatever",
                 "wherever", "whoever"))
_CLOSING = frozenset(".?!\"')")

#: Words that say nothing alone (a murmured "mm-hm" that Whisper writes "and" or "you").
FUNCTION_WORDS = DETERMINERS | COORDINATORS | SUBORDINATORS | PREPOSITIONS | NOMINATIVE \
    | HESITATIONS | {"you"}
#: Not the last word of a statement (the default of ``TurnOptions.unfinished_words``).
STATEMENT_OPEN = tuple(sorted(PREPOSITIONS | NOMINATIVE | HESITATIONS | {"when"}))


def words(text: str) -> list[str]:
    """The words of a transcript, lower case, without punctuation ("’" read as "'")."""
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'"))


def same_words(a: str, b: str) -> bool:
    """Whether two transcripts say the same words, some at least (case and punctuation
    aside: "Send it to." and "send it to" do)."""
    said = words(a)
    return bool(said) and said == words(b)


def _last_clause(text: str) -> list[str]:
    """The words after the last comma, colon or coordinator: "...there might be,
    prudently, and as power did." -> ["as", "power", "did"]."""
    said = words(re.split(r"[,;:]", text)[-1])
    cut = max((k for k, w in enumerate(said) if w in COORDINATORS), default=-1)
    return said[cut + 1:]


def _auxiliary(word: str) -> bool:
    return word in AUXILIARIES or word.endswith("n't")


def open_ending(text: str, *, punctuated: bool,
                statement_open: Set[str] = frozenset(STATEMENT_OPEN)) -> bool:
    """Whether ``text`` stops where no English sentence can end (the module's rules);
    ``punctuated``: from a recogniser that closes sentences with punctuation (Whisper).
    ``statement_open``: the words a statement does not end on."""
    text = text.strip()
    said = words(text)
    if not said:
        return False
    last = said[-1]
    before = said[-2] if len(said) > 1 else ""
    question = text.endswith("?")
    if last in DETERMINERS or last in COORDINATORS or _CONTRACTED.match(last):
        return True
    if last in SUBORDINATORS:
        return before not in DETERMINERS  # "for a while": a noun
    if last == "that" and before in _BEFORE_COMPLEMENTISER:
        return True
    if question:
        return False  # "Who are you with?", "Is it?": the rest moved to the front
    if last in statement_open:
        return True
    if not _auxiliary(last) or before in DETERMINERS or before in PREPOSITIONS:
        return False  # not an auxiliary, or a noun ("a can", "in May")
    if punctuated and text[-1] not in _CLOSING:
        return True  # the recogniser did not close it: "WordPress is"
    if _WH.intersection(_last_clause(text)[1:-1]):
        return False  # "...remind me what the policy is.": the wh-word's gap
    subject = next((w for w in reversed(said[:-1])
                    if not (_auxiliary(w) or w in _ADVERBS or w.endswith("ly"))), "")
    return subject not in SUBJECTS  # "Yes, it is." is finished; "My order number is." not
