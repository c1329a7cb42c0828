"""Word error counting, for transcripts checked against references."""

from __future__ import annotations

import re


def words(text: str) -> list[str]:
    """Lower case, punctuation and hyphens to spaces: "Ill-disposed." -> ["ill", "disposed"]."""
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words (substitutions + insertions + deletions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]
