"""Beam search over real sockets through the inflight_batcher_llm set (max_beam_width
4): the ensemble and the BLS return one text per beam equal to transformers' beam
search, over HTTP generate, tritonclient gRPC streaming and tritonclient HTTP infer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.http as th
from llm_e2e_helpers import grpc_stream, grpc_text_inputs, shared_llm_e2e
from llm_fixtures import EOS_ID

PROMPT = "The quick brown fox"
WIDTH, NEW = 2, 8


@pytest.fixture(scope="module")
def llm(request, tmp_path_factory):
    return shared_llm_e2e(request.config, tmp_path_factory)


@pytest.fixture(scope="module")
def beam_texts(llm):
    """transformers' beams as texts: length_penalty 0 (the model set's default when the
    input is absent, as TensorRT-LLM), early stopping, end token cut."""
    ids = llm.encode(PROMPT)
    with torch.inference_mode():
        out = llm.hf.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            num_beams=WIDTH, num_return_sequences=WIDTH, do_sample=False, max_new_tokens=NEW,
            eos_token_id=EOS_ID, pad_token_id=llm.tokenizer.pad_token_id, length_penalty=0.0,
            early_stopping=True)
    texts = []
    for row in out[:, len(ids):].tolist():
        row = row[: row.index(EOS_ID)] if EOS_ID in row else row
        texts.append(llm.tokenizer.decode(row, skip_special_tokens=True))
    return texts


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_http_generate_returns_a_text_per_beam(llm, beam_texts, model):
    out = llm.generate(model, {"text_input": PROMPT, "max_tokens": NEW, "beam_width": WIDTH,
                               "end_id": EOS_ID})
    assert out["text_output"] == beam_texts  # one flat list of texts, one per beam


def test_grpc_stream_returns_the_beams(llm, beam_texts):
    one = np.array([[False]])  # beams come whole in the final response
    inputs = grpc_text_inputs(PROMPT, NEW, stream=one,
                              beam_width=np.array([[WIDTH]], np.int32),
                              end_id=np.array([[EOS_ID]], np.int32))
    texts = grpc_stream(llm, "ensemble", {"r": inputs})
    assert texts["r"] == "".join(beam_texts)


def test_http_infer_non_decoupled_beams(llm, beam_texts):
    client = th.InferenceServerClient(llm.live.http_url)
    try:
        values = {"text_input": np.array([[PROMPT.encode()]], dtype=object),
                  "max_tokens": np.array([[NEW]], np.int32),
                  "beam_width": np.array([[WIDTH]], np.int32),
                  "end_id": np.array([[EOS_ID]], np.int32)}
        inputs = []
        for name, value in values.items():
            tensor = th.InferInput(name, list(value.shape),
                                   "BYTES" if value.dtype == object else "INT32")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        result = client.infer("nd_ensemble", inputs)
    finally:
        client.close()
    out = result.as_numpy("text_output")
    assert out.shape[-1] == WIDTH
    assert [x.decode() for x in out.reshape(-1)] == beam_texts
