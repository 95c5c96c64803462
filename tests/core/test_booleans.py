"""The one vocabulary of boolean words (core/booleans.py) and the readers built on it."""

import argparse

import pytest

from llmserve.backends.tensorrtllm.values import parse_bool as trtllm_bool
from llmserve.cli import parse_bool as flag_bool
from llmserve.core.booleans import bool_word
from llmserve.core.errors import InvalidArgument


@pytest.mark.parametrize("text", ["1", "true", "TRUE", " yes ", "On"])
def test_true_words(text):
    assert bool_word(text) is True
    assert flag_bool(text) is True
    assert trtllm_bool("p", text) is True


@pytest.mark.parametrize("text", ["0", "false", "False", " no", "OFF"])
def test_false_words(text):
    assert bool_word(text) is False
    assert flag_bool(text) is False
    assert trtllm_bool("p", text) is False


@pytest.mark.parametrize("text", ["", "2", "maybe", "truee", "${flag}"])
def test_other_text_is_no_boolean_and_each_reader_says_so(text):
    assert bool_word(text) is None
    with pytest.raises(argparse.ArgumentTypeError, match="expected true or false"):
        flag_bool(text)
    with pytest.raises(InvalidArgument, match="parameter 'p': expected true or false"):
        trtllm_bool("p", text)
