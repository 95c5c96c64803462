"""core/env_numbers.py, and the variables read through it that no other test parses."""

import pytest

from llmserve.core.env_numbers import env_number
from llmserve.core.errors import InvalidArgument
from llmserve.llm.engine.tensor_parallel import DEFAULT_TIMEOUT_S, collective_timeout_s


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("", None), ("  ", None),
                                               (" 7 ", 7)])
def test_unset_or_blank_is_none_and_spaces_are_ignored(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("LLMSERVE_X", raising=False)
    else:
        monkeypatch.setenv("LLMSERVE_X", raw)
    assert env_number("LLMSERVE_X", int, lambda n: n > 0, "positive") == expected


@pytest.mark.parametrize("raw", ["x", "1.5", "0"])
def test_a_refused_value_names_the_variable_and_what_it_must_be(monkeypatch, raw):
    monkeypatch.setenv("LLMSERVE_X", raw)
    with pytest.raises(ValueError, match=f"LLMSERVE_X must be a positive integer, got '{raw}'"):
        env_number("LLMSERVE_X", int, lambda n: n > 0, "a positive integer")


def test_the_collective_timeout(monkeypatch):
    monkeypatch.delenv("LLMSERVE_TP_TIMEOUT_S", raising=False)
    assert collective_timeout_s() == DEFAULT_TIMEOUT_S
    monkeypatch.setenv("LLMSERVE_TP_TIMEOUT_S", "2.5")
    assert collective_timeout_s() == 2.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("LLMSERVE_TP_TIMEOUT_S", bad)
        with pytest.raises(InvalidArgument, match="LLMSERVE_TP_TIMEOUT_S must be a number"):
            collective_timeout_s()
