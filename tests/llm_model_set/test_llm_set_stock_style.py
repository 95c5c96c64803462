"""The model set with preprocessing, postprocessing and tensorrt_llm_bls files written the
way tensorrtllm_backend's own are (stock_style/: their imports, including requests and
PIL, their pb_utils calls, their word-list and batching code, the BLS's lib/ package and
dlpack conversions), served with llmserve's tensorrt_llm: the ensemble and the BLS give
transformers' greedy text."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from llm_set_server import ServedModelSet, text_of, text_request

STOCK = Path(__file__).parent / "stock_style"
PROMPT = "The quick brown fox"


def use_stock_files(repo: Path) -> None:
    for model in ("preprocessing", "postprocessing"):
        shutil.copy(STOCK / model / "model.py", repo / model / "1" / "model.py")
    shutil.rmtree(repo / "tensorrt_llm_bls" / "1")
    shutil.copytree(STOCK / "tensorrt_llm_bls", repo / "tensorrt_llm_bls" / "1",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # the stock postprocessing takes TOKENS_BATCH and SEQUENCE_LENGTH only (it raises on
    # any other input): drop llmserve's optional STREAMING input and its ensemble mapping
    post = repo / "postprocessing" / "config.pbtxt"
    post.write_text(re.sub(r',\s*\{\s*name: "STREAMING"[^}]*\}', "", post.read_text()))
    ens = repo / "ensemble" / "config.pbtxt"
    ens.write_text(re.sub(r'\s*input_map \{\s*key: "STREAMING"\s*value: "stream"\s*\}', "",
                          ens.read_text()))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = ServedModelSet(tmp_path_factory.mktemp("stockset"), prepare=use_stock_files)
    yield s
    s.close()


def test_the_repository_uses_the_stock_style_files(served):
    for model in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        text = (served.repo / model / "1" / "model.py").read_text()
        assert "from llmserve" not in text and text == (STOCK / model / "model.py").read_text()
    assert "STREAMING" not in (served.repo / "postprocessing" / "config.pbtxt").read_text()


def test_ensemble_greedy_equals_transformers(served):
    want = served.tokenizer.decode(served.greedy(PROMPT, 12), skip_special_tokens=True)
    assert text_of(served.infer("ensemble", text_request(PROMPT, 12))) == want


def test_stop_words_as_a_list_of_words(served):
    gen = served.greedy(PROMPT, 16)
    full = served.tokenizer.decode(gen, skip_special_tokens=True)
    stop = served.stop_word(gen)
    words = np.array([[b"never-generated-zzz", stop.encode()]], dtype=object)
    text = text_of(served.infer("ensemble", text_request(PROMPT, 16, stop_words=words)))
    assert text == full[: full.index(stop) + len(stop)] and text != full


def test_concurrent_requests_each_get_their_own_text(served):
    async def many():
        import asyncio

        return await asyncio.gather(*(served.ainfer("ensemble", text_request(PROMPT, n))
                                      for n in (3, 5, 8, 12)))

    results = served.run(many())
    for n, responses in zip((3, 5, 8, 12), results, strict=True):
        want = served.tokenizer.decode(served.greedy(PROMPT, n), skip_special_tokens=True)
        assert text_of(responses) == want


def test_bls_greedy_equals_transformers(served):
    want = served.tokenizer.decode(served.greedy(PROMPT, 12), skip_special_tokens=True)
    assert text_of(served.infer("tensorrt_llm_bls", text_request(PROMPT, 12))) == want


def test_bls_streams_text_that_adds_up(served):
    """Streaming through the stock-style BLS: the stock postprocessing decodes each
    response's tokens on their own; tensorrt_llm holds back tokens that end inside a
    UTF-8 character, so the streamed pieces still add up to the whole text."""
    gen = served.greedy(PROMPT, 8)
    responses = served.infer("tensorrt_llm_bls", text_request(PROMPT, 8, stream=[[True]]))
    texts = [r.output("text_output") for r in responses]
    texts = [t.data.reshape(-1)[0].decode() for t in texts if t is not None]
    assert len(texts) > 1
    assert "".join(texts) == served.tokenizer.decode(gen, skip_special_tokens=True)
