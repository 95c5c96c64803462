"""StopChecker: stop strings found across chunk boundaries, never emitted, tails held."""

from llmserve.frontends.openai.stop_strings import StopChecker


def feed(stops, pieces):
    checker = StopChecker(stops)
    out = "".join(checker.push(p) for p in pieces)
    return out + checker.flush(), checker.stopped


def test_no_stops_passes_through():
    checker = StopChecker([])
    assert checker.push("abc") == "abc" and checker.flush() == ""


def test_stop_across_pieces_is_cut_before_it():
    assert feed(["world"], ["Hello wor", "ld! more"]) == ("Hello ", True)
    assert feed(["world"], ["Hello w", "o", "r", "l", "d"]) == ("Hello ", True)


def test_held_tail_released_when_it_cannot_become_a_stop():
    checker = StopChecker(["world"])
    assert checker.push("Hello wor") == "Hello "  # "wor" could still become "world"
    assert checker.held == "wor"
    assert checker.push("m") == "worm"
    assert not checker.stopped


def test_tail_released_at_end():
    assert feed(["world"], ["Hello wo"]) == ("Hello wo", False)


def test_earliest_of_several_stops_wins():
    assert feed(["fox", "quick"], ["the qui", "ck brown fox"]) == ("the ", True)
    assert feed(["ab", "b"], ["xab"]) == ("x", True)


def test_nothing_after_stop():
    checker = StopChecker(["."])
    assert checker.push("a.b") == "a"
    assert checker.push("more") == "" and checker.flush() == ""


def test_overlapping_prefix_keeps_longest_candidate():
    # "aab" with stop "ab": "a" then "a" then "b" -> stop found at index 1
    assert feed(["ab"], ["a", "a", "b"]) == ("a", True)
    assert feed(["aab"], ["a", "a", "a", "b"]) == ("a", True)
