"""Beam search through the served model set (max_beam_width 4): tensorrt_llm's
output_ids [beams, tokens], sequence_length and cum_log_probs per beam equal
transformers' beam search, streamed beams, and beams as texts through the ensemble."""

import numpy as np
import pytest
import torch
from llm_set_server import ServedModelSet, text_request

PROMPT = "The quick brown fox"
EOS = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import fill_demo_repository

    original = fill_demo_repository.model_values

    def with_beams(*args, **kw):
        values = original(*args, **kw)
        values["tensorrt_llm"]["max_beam_width"] = "4"
        return values

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fill_demo_repository, "model_values", with_beams)
        s = ServedModelSet(tmp_path_factory.mktemp("llmset_beam"))
    yield s
    s.close()


def hf_beams(served, ids, width, new, length_penalty):
    """transformers' beams (end token cut) and sequence scores."""
    with torch.inference_mode():
        out = served.hf.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            num_beams=width, num_return_sequences=width, do_sample=False, max_new_tokens=new,
            eos_token_id=EOS, pad_token_id=served.tokenizer.pad_token_id,
            length_penalty=length_penalty, early_stopping=True,
            return_dict_in_generate=True, output_scores=True)
    beams = []
    for row in out.sequences[:, len(ids):].tolist():
        beams.append(row[: row.index(EOS)] if EOS in row else row)
    return beams, out.sequences_scores.tolist()


def trtllm_inputs(ids, width, new, **extra):
    inputs = {"input_ids": np.array([ids], np.int32),
              "input_lengths": np.array([[len(ids)]], np.int32),
              "request_output_len": np.array([[new]], np.int32),
              "end_id": np.array([[EOS]], np.int32),
              "beam_width": np.array([[width]], np.int32),
              "len_penalty": np.array([[1.0]], np.float32),
              "early_stopping": np.array([[True]]),
              "return_log_probs": np.array([[True]])}
    inputs.update(extra)
    return inputs


def beams_of(resp):
    ids = resp.output("output_ids").data[0]
    lengths = resp.output("sequence_length").data[0]
    return [row[:n].tolist() for row, n in zip(ids, lengths, strict=True)]


def test_tensorrt_llm_returns_transformers_beams(served):
    ids = served.tokenizer.encode(PROMPT)
    beams, scores = hf_beams(served, ids, 3, 10, 1.0)
    out = [r for r in served.infer("tensorrt_llm", trtllm_inputs(ids, 3, 10))
           if r.output("output_ids") is not None]
    assert len(out) == 1 and out[0].output("output_ids").data.shape[:2] == (1, 3)
    assert beams_of(out[0]) == beams
    cum = out[0].output("cum_log_probs").data[0].tolist()
    # the score counts the end token in the length when a beam ended on it
    lengths = [len(b) + (len(b) < 10) for b in beams]
    assert [c / n for c, n in zip(cum, lengths, strict=True)] == pytest.approx(scores, abs=1e-3)


def test_tensorrt_llm_streams_whole_beams(served):
    ids = served.tokenizer.encode(PROMPT)
    final = beams_of([r for r in served.infer("tensorrt_llm", trtllm_inputs(ids, 2, 6))
                      if r.output("output_ids") is not None][0])
    stream = [r for r in served.infer("tensorrt_llm", trtllm_inputs(
        ids, 2, 6, streaming=np.array([[True]]))) if r.output("output_ids") is not None]
    assert len(stream) > 1
    for step, resp in enumerate(stream[:-1], start=1):
        assert [len(b) for b in beams_of(resp)] == [step, step]  # every token so far
    assert beams_of(stream[-1]) == final


def test_ensemble_returns_one_text_per_beam(served):
    ids = served.tokenizer.encode(PROMPT)
    beams, _ = hf_beams(served, ids, 2, 8, 0.0)  # no length_penalty input: 0 (TRT-LLM)
    request = text_request(PROMPT, 8, beam_width=np.array([[2]], np.int32),
                           end_id=np.array([[EOS]], np.int32))
    texts = [r.output("text_output") for r in served.infer("ensemble", request)]
    texts = [t for t in texts if t is not None]
    assert len(texts) == 1
    got = [x.decode() if isinstance(x, bytes) else str(x) for x in texts[0].data.reshape(-1)]
    want = [served.tokenizer.decode(b, skip_special_tokens=True) for b in beams]
    assert got == want
