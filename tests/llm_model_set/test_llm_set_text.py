"""Tokenizer helpers of the model set: word lists, embedding bias, streaming decode."""

import json

import numpy as np
import pytest
from llm_fixtures import build_tokenizer
from model_set_helpers import REPO, metaspace_tokenizer

from llmserve.backends.tensorrtllm import text
from llmserve.backends.tensorrtllm.fast_decode import FastDecoder


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def test_each_element_is_one_word_commas_and_all():
    """As the stock preprocessing's _to_word_list_format: no CSV splitting."""
    assert text.word_list([b"Hello,world", b'"a,b",c', b"", "x"]) == ["Hello,world", '"a,b",c', "x"]


def test_words_to_ids_offsets_layout(tok):
    batch = np.array([[b"fox", b"dog"], [b"quick", b""]], dtype=object)
    out = text.words_to_ids_offsets(tok, batch, 2)
    fox = tok.encode("fox", add_special_tokens=False)
    dog = tok.encode("dog", add_special_tokens=False)
    quick = tok.encode("quick", add_special_tokens=False)
    assert out.shape[:2] == (2, 2) and out.dtype == np.int32
    width = out.shape[2]
    assert out[0, 0].tolist() == fox + dog + [0] * (width - len(fox + dog))
    ends = [len(fox), len(fox) + len(dog)]
    assert out[0, 1].tolist() == ends + [-1] * (width - 2)
    assert out[1, 0, : len(quick)].tolist() == quick
    assert out[1, 1].tolist() == [len(quick)] + [-1] * (width - 1)


def test_words_to_ids_offsets_empty(tok):
    assert text.words_to_ids_offsets(tok, None, 3).shape == (3, 2, 0)
    assert text.words_to_ids_offsets(tok, np.array([[b""]], dtype=object), 1).shape == (1, 2, 0)


def test_embedding_bias(tok):
    words = np.array([[b"fox", b"dog"]], dtype=object)
    weights = np.array([[1.5, -2.0]], dtype=np.float32)
    bias = text.embedding_bias(tok, words, weights, 1, 320)
    expected = np.zeros(320, np.float32)
    for word, weight in (("fox", 1.5), ("dog", -2.0)):
        for t in tok.encode(word, add_special_tokens=False):
            expected[t] += weight
    assert bias.shape == (1, 320)
    np.testing.assert_allclose(bias[0], expected)
    assert np.count_nonzero(expected) > 0
    assert text.embedding_bias(tok, None, None, 2, 320).shape == (2, 0)
    with pytest.raises(ValueError):
        text.embedding_bias(tok, words, np.array([[1.0]], np.float32), 1, 320)


def test_utf8_holdback_never_splits_a_character(tok):
    ids = tok.encode("quick 中文 fox", add_special_tokens=False)
    hold = text.Utf8HoldBack(tok)
    pieces = []
    for i, t in enumerate(ids):
        released = hold.push([t], final=i == len(ids) - 1)
        if released:
            piece = tok.decode(released)
            assert "\ufffd" not in piece
            pieces.append(piece)
    assert "".join(pieces) == "quick 中文 fox"


def test_incremental_decoder_matches_full_decode(tok):
    ids = tok.encode("Hello 世界, the lazy dog!", add_special_tokens=False)
    dec = text.IncrementalDecoder(lambda lists: [tok.decode(x) for x in lists])
    deltas = [dec.push([t]) for t in ids]
    deltas.append(dec.push([], final=True))
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids)


def test_sentencepiece_spaces_kept(tmp_path):
    sp = metaspace_tokenizer(tmp_path)
    ids = sp.encode("hello world again", add_special_tokens=False)
    # token-by-token plain decode loses the spaces (tensorrtllm_backend #332) ...
    assert "".join(sp.decode([t]) for t in ids) != "hello world again"
    # ... decoding each delta as a continuation keeps them
    first = sp.decode(ids[:1])
    rest = "".join(text.decode_continuation(sp, [t], True) for t in ids[1:])
    assert first + rest == "hello world again"
    dec = text.IncrementalDecoder(lambda lists: [sp.decode(x) for x in lists])
    out = "".join(dec.push([t]) for t in ids) + dec.push([], final=True)
    assert out == "hello world again"


@pytest.mark.parametrize("kind", ["byte_level", "metaspace", "demo"])
@pytest.mark.parametrize("skip", [True, False])
def test_fast_decoder_is_the_postprocessing_text(tmp_path, tok, kind, skip):
    """The BLS's in-process decoder (tokenizers only) gives transformers' text for every
    single id and for random id runs (special and byte-fallback ids included), plain and
    as a streamed continuation."""
    demo = REPO / "models" / "demo-llm"
    folder = {"byte_level": tmp_path / "bl", "metaspace": tmp_path, "demo": demo}[kind]
    if kind == "byte_level":
        tok.save_pretrained(str(folder))
    ref = metaspace_tokenizer(folder) if kind == "metaspace" else text.load_tokenizer(folder)
    fast = FastDecoder.load(folder, skip)
    assert fast is not None
    rng = np.random.default_rng(0)
    runs = [[i] for i in range(len(ref))] + [
        rng.integers(0, len(ref), int(rng.integers(1, 12))).tolist() for _ in range(300)]
    assert fast.decode_many(runs) == [ref.decode(r, skip_special_tokens=skip) for r in runs]
    assert fast.decode_many(runs, streaming=True) == [
        text.decode_continuation(ref, r, skip) for r in runs]


def test_fast_decoder_declines_what_it_cannot_match(tmp_path, tok):
    assert FastDecoder.load(tmp_path, True) is None  # no tokenizer.json
    tok.save_pretrained(str(tmp_path))
    config = tmp_path / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    config.write_text(json.dumps({**settings, "clean_up_tokenization_spaces": True}))
    assert FastDecoder.load(tmp_path, True) is None
