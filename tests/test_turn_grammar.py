"""The words check's grammar (``turn/grammar.py``): where an English sentence cannot end."""

from __future__ import annotations

import pytest

from rejoinder.turn.grammar import open_ending
from rejoinder.turn.options import TurnOptions


@pytest.mark.parametrize(("text", "unfinished"), [
    # determiners need their noun, coordinators their second conjunct: even before "?"
    ("Can I speak to the", True),
    ("Could I pay with my?", True),
    ("I'd like the salmon and", True),
    ("It was cheap but.", True),
    # subordinators and complementisers need their clause
    ("I need to change it because.", True),
    ("Could you check whether?", True),
    ("Can you tell me if?", True),
    ("It costs more than.", True),
    ("I waited for a while.", False),          # after a determiner: the noun
    ("The thing is that", True),               # after a copula: a complementiser
    ("My thing is that.", True),
    ("I'll move it so that", True),
    ("I'd like that.", False),                 # elsewhere it may be a pronoun
    ("What's that?", False),
    # a contracted auxiliary never stands before an ellipsis
    ("Yes, it's.", True),
    ("I think we'll.", True),
    ("So that's", True),
    ("The umbrella is John's.", False),        # a noun's possessive
])
def test_words_no_sentence_ends_on(text, unfinished):
    assert open_ending(text, punctuated=True) is unfinished


@pytest.mark.parametrize(("text", "unfinished"), [
    # a copula or auxiliary whose complement has not come
    ("WordPress is", True),
    ("My order number is.", True),
    ("What I really want to know is.", True),
    ("I think the best time for me would be.", True),   # "me" is no subject
    ("The address isn't.", True),
    ("And as power did.", True),
    # ...left unsaid: in a question, or after a pronoun subject in a closed sentence
    ("Can you remind me what the cancellation policy is?", False),
    ("Do you know who I am?", False),
    ("Yes, it is.", False),
    ("I think so, that is.", False),
    ("He might have been made more respectable than he was.", False),
    ("Yes, it really is.", False),             # past an adverb
    ("I think it could have been.", False),    # past the other auxiliaries
    ("No, it isn't.", False),
    ("I'm not sure we can.", False),
    ("Yes, there is.", False),
    ("That's all I have.", False),
    ("Could you remind me what the cancellation policy is.", False),  # an embedded wh-gap
    ("I know how much there might be.", False),
    ("What I need is.", True),                 # the wh-clause is the subject
    ("I know how much it is, and as power did.", True),  # the wh-word of another clause
    # a recogniser that punctuates did not close it: not yet
    ("Yes it is", True),
    # after a determiner or a preposition the word is a noun
    ("I'd like a can.", False),
    ("We're going in May.", False),
    ("It's a must.", False),
])
def test_an_auxiliary_ends_a_sentence_only_after_a_subject_pronoun_or_in_a_question(
        text, unfinished):
    assert open_ending(text, punctuated=True) is unfinished


def test_without_punctuation_the_subject_alone_decides():
    assert open_ending("yes it is", punctuated=False) is False
    assert open_ending("wordpress is", punctuated=False) is True


@pytest.mark.parametrize(("text", "unfinished"), [
    ("Please send the invoice to.", True),
    ("I would like to pay my bill with", True),
    ("Then I", True),
    ("Who are you with?", False),              # a question strands its preposition
    ("Where are you from?", False),
    # words that end statements, though some once counted as unfinished
    ("Thank you.", False),
    ("I'll take this.", False),
    ("I told her.", False),
    ("I think so.", False),
    ("I like it, though.", False),
    ("It could be.", False),
])
def test_a_statement_does_not_end_on_a_preposition_or_a_nominative_pronoun(text, unfinished):
    assert TurnOptions().is_unfinished(text, punctuated=True) is unfinished


def test_the_operator_s_words_still_hold_a_statement():
    opts = TurnOptions(unfinished_words=("please",))
    assert opts.is_unfinished("Could you please.") is True
    assert opts.is_unfinished("Could you please?") is False
    assert opts.is_unfinished("Please send it to.") is False  # the list was replaced
    assert opts.is_unfinished("Please send it to the.") is True  # the grammar is not


@pytest.mark.parametrize(("text", "backchannel"), [
    ("and", True), ("you", True), ("Mm-hmm.", True), ("and, um", True),
    ("Yes.", False), ("That is", False), ("and then the", False),
])
def test_one_or_two_words_that_say_nothing_alone_are_a_backchannel(text, backchannel):
    assert TurnOptions().is_backchannel(text) is backchannel
