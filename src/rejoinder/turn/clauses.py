"""Split a stream of LLM text deltas into clauses that TTS can speak right away.

A clause ends at sentence punctuation, or at a comma/semicolon/colon/dash once it
has at least ``min_words`` words (so "Well," alone does not become its own clip).
Spoken output has no markdown: emphasis marks, headings, code ticks, list bullets
and links are removed before text reaches TTS.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(\S*?)([.!?…]+)[\"')\]*_`]*(?=\s)")
_SOFT_END = re.compile(r"[,;:]|\s[-–—]\s")
# A sentence mark at the very end of the text so far: the clause may be complete now,
# one token earlier than waiting for the next word's space would tell.
_END_NOW = re.compile(r"(\S*)([.!?…]+)[\"')\]*_`]*$")
_ABBREVIATIONS = frozenset(
    ["mr", "mrs", "ms", "dr", "st", "vs", "etc", "jr", "sr", "no", "prof", "e.g", "i.e",
     "approx", "dept", "fig", "inc", "ltd", "co"])
_MARKDOWN = re.compile(r"(\*\*|__|\*|`+|^#{1,6}\s*|^\s*[-*+]\s+|^\s*\d+\.\s+)", re.MULTILINE)
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_SPACES = re.compile(r"\s+")


def clean_for_speech(text: str) -> str:
    """Remove markdown and collapse whitespace."""
    text = _LINK.sub(r"\1", text)
    text = _MARKDOWN.sub("", text)
    return _SPACES.sub(" ", text)


class ClauseSplitter:
    """Feed deltas with :meth:`push`; it returns the clauses completed so far."""

    def __init__(self, min_words: int = 3) -> None:
        self.min_words = min_words
        self._buf = ""

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                return out
            clause = clean_for_speech(self._buf[:cut]).strip()
            self._buf = self._buf[cut:]
            if clause:
                out.append(clause)

    @property
    def pending(self) -> str:
        """The text pushed but not yet cut into a clause."""
        return self._buf

    def flush(self) -> list[str]:
        clause = clean_for_speech(self._buf).strip()
        self._buf = ""
        return [clause] if clause else []

    def _find_cut(self) -> int | None:
        # A newline ends a clause too (LLMs put list items on their own lines).
        nl = self._buf.find("\n")
        sentence = next((m.end() for m in _SENTENCE_END.finditer(self._buf)
                         if _ends_sentence(m.group(1), m.group(2), last=False)), None)
        ends = [e for e in (sentence, nl + 1 if nl >= 0 else None) if e]
        if ends:
            return min(ends)
        m = _END_NOW.search(self._buf)
        if m is not None and _ends_sentence(m.group(1), m.group(2), last=True):
            return len(self._buf)
        for soft in _SOFT_END.finditer(self._buf):
            head = self._buf[:soft.end()]
            if len(head.split()) < self.min_words:
                continue
            if head[-2:-1].isdigit() and self._buf[soft.end():soft.end() + 1].isdigit():
                continue  # inside a number or a time: "1,000", "9:30"
            # A comma at the very end is final unless a digit precedes it ("1,000").
            if soft.end() < len(self._buf) or not head[-2:-1].isdigit():
                return soft.end()
        return None

def _ends_sentence(word: str, marks: str, last: bool) -> bool:
    """Do ``marks`` after ``word`` end a sentence?

    "!" and "?" always do. A period does unless it belongs to an abbreviation ("Dr.",
    "e.g.", initials like "U.S."), or, at the very end of the text so far (``last``),
    to a number that may go on ("3." before "5").
    """
    if marks != "." and not marks.startswith(".."):
        return True
    if not word:
        return not last
    if last and word[-1].isdigit():
        return False
    bare = word.strip("\"'([*_`").lower()
    return bare not in _ABBREVIATIONS and not (len(bare) == 1 and bare.isalpha()) \
        and "." not in bare


def split_clauses(text: str, min_words: int = 3) -> list[str]:
    """The clauses a whole text is spoken in (as the same text streamed would be)."""
    splitter = ClauseSplitter(min_words)
    return splitter.push(text + " ") + splitter.flush()
