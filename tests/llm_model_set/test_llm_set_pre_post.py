"""preprocessing and postprocessing model.py called directly with pb_utils objects."""

import numpy as np
import pytest
from llm_fixtures import BOS_ID, EOS_ID, PAD_ID, build_tokenizer
from model_set_helpers import init_model, metaspace_tokenizer, outputs, request

import triton_python_backend_utils as pb_utils


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def pre(tok_dir):
    return init_model("preprocessing", {"tokenizer_dir": str(tok_dir),
                                        "add_special_tokens": "${add_special_tokens}",
                                        "gpt_model_path": "${engine_dir}"})


@pytest.fixture(scope="module")
def post(tok_dir):
    return init_model("postprocessing", {"tokenizer_dir": str(tok_dir), "skip_special_tokens": "true"})


def test_preprocessing_tokenizes_and_passes_through(pre, tok):
    req = request(
        pb_utils,
        QUERY=np.array([[b"The quick brown fox"], [b"Hello"]], dtype=object),
        REQUEST_OUTPUT_LEN=np.array([[7], [3]], np.int32),
        STOP_WORDS_DICT=np.array([[b"dog", b"fox"], [b"", b""]], dtype=object),
    )
    (resp,) = pre.execute([req])
    out = outputs(resp)
    ids0 = tok.encode("The quick brown fox")  # add_special_tokens unset -> default true
    ids1 = tok.encode("Hello")
    assert out["REQUEST_INPUT_LEN"].tolist() == [[len(ids0)], [len(ids1)]]
    assert out["INPUT_ID"][0, : len(ids0)].tolist() == ids0
    assert out["INPUT_ID"][1, : len(ids1)].tolist() == ids1
    assert out["INPUT_ID"].dtype == np.int32
    assert out["REQUEST_OUTPUT_LEN"].tolist() == [[7], [3]]
    assert out["OUT_END_ID"].tolist() == [[EOS_ID], [EOS_ID]]
    assert out["OUT_PAD_ID"].tolist() == [[PAD_ID], [PAD_ID]]
    stop = out["STOP_WORDS_IDS"]
    assert stop.shape[:2] == (2, 2)
    dog = tok.encode("dog", add_special_tokens=False)
    assert stop[0, 1, 0] == len(dog) and stop[1, 1].tolist() == [-1] * stop.shape[2]
    assert out["BAD_WORDS_IDS"].shape == (2, 2, 0)
    assert out["EMBEDDING_BIAS"].shape == (2, 0)


def test_preprocessing_explicit_ids_and_bias(pre, tok):
    req = request(
        pb_utils,
        QUERY=np.array([[b"fox"]], dtype=object),
        REQUEST_OUTPUT_LEN=np.array([[4]], np.int32),
        END_ID=np.array([[5]], np.int32),
        PAD_ID=np.array([[6]], np.int32),
        BAD_WORDS_DICT=np.array([[b"lazy"]], dtype=object),
        EMBEDDING_BIAS_WORDS=np.array([[b"dog"]], dtype=object),
        EMBEDDING_BIAS_WEIGHTS=np.array([[2.0]], np.float32),
    )
    out = outputs(pre.execute([req])[0])
    assert out["OUT_END_ID"].tolist() == [[5]] and out["OUT_PAD_ID"].tolist() == [[6]]
    lazy = tok.encode("lazy", add_special_tokens=False)
    assert out["BAD_WORDS_IDS"][0, 0].tolist() == lazy
    assert out["BAD_WORDS_IDS"][0, 1].tolist() == [len(lazy)] + [-1] * (len(lazy) - 1)
    bias = out["EMBEDDING_BIAS"]
    assert bias.shape == (1, len(tok))
    assert all(bias[0, t] > 0 for t in tok.encode("dog", add_special_tokens=False))


def test_preprocessing_without_special_tokens(tok_dir, tok):
    model = init_model("preprocessing", {"tokenizer_dir": str(tok_dir), "add_special_tokens": "false"})
    req = request(pb_utils, QUERY=np.array([[b"fox"]], dtype=object),
                  REQUEST_OUTPUT_LEN=np.array([[1]], np.int32))
    out = outputs(model.execute([req])[0])
    assert out["INPUT_ID"][0].tolist() == tok.encode("fox", add_special_tokens=False)
    assert BOS_ID not in out["INPUT_ID"][0].tolist()


def test_preprocessing_extra_ids_only_mark_prompt_table_ids(pre):
    """PROMPT_TABLE_EXTRA_ID goes to ids past the vocabulary (p-tuning's); text tokens
    get 0, as upstream, so blocks of ordinary text stay shared."""
    req = request(pb_utils, QUERY=np.array([[b"Hello"]], dtype=object),
                  REQUEST_OUTPUT_LEN=np.array([[3]], np.int32),
                  PROMPT_TABLE_EXTRA_ID=np.array([[9]], np.uint64))
    (resp,) = pre.execute([req])
    out = outputs(resp)
    assert out["OUT_PROMPT_TABLE_EXTRA_IDS"].shape == out["INPUT_ID"].shape
    assert not out["OUT_PROMPT_TABLE_EXTRA_IDS"].any()


def test_preprocessing_bad_bias_is_an_error(pre):
    req = request(
        pb_utils,
        QUERY=np.array([[b"fox"]], dtype=object),
        REQUEST_OUTPUT_LEN=np.array([[4]], np.int32),
        EMBEDDING_BIAS_WORDS=np.array([[b"dog", b"fox"]], dtype=object),
        EMBEDDING_BIAS_WEIGHTS=np.array([[2.0]], np.float32),
    )
    (resp,) = pre.execute([req])
    assert resp.has_error() and "same number" in resp.error().message()


def test_postprocessing_decodes_beams(post, tok):
    a = tok.encode("The quick brown fox")
    b = tok.encode("lazy dog")
    tokens = np.zeros((1, 2, max(len(a), len(b)) + 3), np.int32)
    tokens[0, 0, : len(a)] = a
    tokens[0, 1, : len(b)] = b
    req = request(pb_utils, TOKENS_BATCH=tokens, SEQUENCE_LENGTH=np.array([[len(a), len(b)]], np.int32))
    out = outputs(post.execute([req])[0])["OUTPUT"]
    assert out.shape == (1, 2)
    assert [x.decode() for x in out[0]] == ["The quick brown fox", "lazy dog"]


def test_postprocessing_streaming_keeps_sentencepiece_space(tmp_path):
    sp = metaspace_tokenizer(tmp_path)
    model = init_model("postprocessing", {"tokenizer_dir": str(tmp_path)})
    (world,) = sp.encode("world", add_special_tokens=False)[:1]

    def run(streaming):
        inputs = dict(TOKENS_BATCH=np.array([[[world]]], np.int32), SEQUENCE_LENGTH=np.array([[1]], np.int32))
        if streaming is not None:
            inputs["STREAMING"] = np.array([[streaming]])
        return outputs(model.execute([request(pb_utils, **inputs)])[0])["OUTPUT"][0, 0].decode()

    assert run(None) == "world"
    assert run(False) == "world"
    assert run(True) == " world"
