from rejoinder.turn.clauses import ClauseSplitter, clean_for_speech


def split(deltas, min_words=3):
    s = ClauseSplitter(min_words)
    out = []
    for d in deltas:
        out += s.push(d)
    return out + s.flush()


def test_a_sentence_ends_with_its_last_token_when_it_cannot_be_anything_else():
    s = ClauseSplitter()
    assert s.push("Hello there.") == ["Hello there."]
    assert s.push(" Really?") == ["Really?"]
    assert s.push(" It costs 3.") == []  # maybe 3.5
    assert s.push("5 dollars, Dr.") == ["It costs 3.5 dollars,"]
    assert s.push(" Smith said so, e.g.") == ["Dr. Smith said so,"]
    assert s.push(" today.") == ["e.g. today."]
    assert s.push(" I think so,") == ["I think so,"]
    assert s.push(" about 1,") == []
    assert s.push("000 more words,") == ["about 1,000 more words,"]
    assert s.flush() == []


def test_short_lead_in_is_not_its_own_clause_but_a_long_one_is():
    assert split(["Well,", " I think", " so, and", " then more."]) == [
        "Well, I think so,", "and then more."]


def test_markdown_is_not_spoken():
    assert split(["**Sure!** Here", " is `code`.\n- one\n- two"]) == [
        "Sure!", "Here is code.", "one", "two"]
    assert clean_for_speech("# Title [link](http://x) __b__") == "Title link b"


def test_numbers_with_decimal_points_are_not_split():
    assert split(["It costs 3.5 dollars", " today."]) == ["It costs 3.5 dollars today."]


def test_clock_times_and_thousands_inside_a_delta_are_not_split():
    # A whole word per delta, as many LLMs stream: the mark is never the buffer's end.
    assert split(["I have Monday at 9:30 AM", " or 10:00 AM."]) == [
        "I have Monday at 9:30 AM or 10:00 AM."]
    assert split(["That is about 1,000 more", " words, and then"]) == [
        "That is about 1,000 more words,", "and then"]
