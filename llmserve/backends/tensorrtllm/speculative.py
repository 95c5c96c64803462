"""Draft-model speculative decoding for the tensorrt_llm_bls model (as tensorrtllm_backend's
BLS does it): the draft model proposes num_draft_tokens, the target model verifies them
(draft_input_ids, optionally draft_logits) and adds one token; repeat until the target
hits end_id, a stop word or max_tokens. Greedy output equals the target's alone.
"""

from __future__ import annotations

import numpy as np


def _generate(bls, model: str, inputs: dict, outputs: list[str]) -> dict:
    import triton_python_backend_utils as pb_utils

    request = bls._bls_request(model, inputs, outputs)
    if bls.decoupled:
        result = {}
        for response in request.exec(decoupled=True):
            if response.has_error():
                raise pb_utils.TritonModelException(response.error().message())
            result.update({t.name(): t.as_numpy() for t in response.output_tensors()})
        return result
    response = request.exec()
    if response.has_error():
        raise pb_utils.TritonModelException(response.error().message())
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def _tokens(out: dict) -> list[int]:
    ids = out["output_ids"].reshape(-1, out["output_ids"].shape[-1])[0]
    return ids[: int(out["sequence_length"].reshape(-1)[0])].tolist()


def run_draft_target(bls, inputs: dict, llm_inputs: dict, num_draft: int, stop_words: list[str]):
    """Yield the BLS responses (deltas when streaming, one final text otherwise)."""
    from llmserve.backends.tensorrtllm.text import IncrementalDecoder

    streaming = bool(np.asarray(inputs.get("stream", [[False]])).reshape(-1)[0])
    use_logits = bool(np.asarray(inputs.get("use_draft_logits", [[False]])).reshape(-1)[0])
    prompt_len = int(np.asarray(llm_inputs["input_lengths"]).reshape(-1)[0])
    prompt = np.asarray(llm_inputs["input_ids"]).reshape(-1)[:prompt_len].tolist()
    max_tokens = int(np.asarray(llm_inputs["request_output_len"]).reshape(-1)[0])
    end_id = int(np.asarray(llm_inputs.get("end_id", [[-1]])).reshape(-1)[0])
    base = {k: v for k, v in llm_inputs.items() if k not in ("streaming", "exclude_input_in_output")}
    generated: list[int] = []
    decoder = IncrementalDecoder(bls._decode_many)
    text = ""
    while len(generated) < max_tokens:
        current = prompt + generated
        step = {**base, "input_ids": np.array([current], np.int32),
                "input_lengths": np.array([[len(current)]], np.int32),
                "exclude_input_in_output": np.array([[True]])}
        draft_len = min(num_draft, max_tokens - len(generated) - 1)
        target_inputs = dict(step)
        if draft_len > 0:
            draft_req = {**step, "request_output_len": np.array([[draft_len]], np.int32)}
            if use_logits:
                draft_req["return_generation_logits"] = np.array([[True]])
            draft_out = _generate(bls, bls.draft_name, draft_req, ["output_ids", "sequence_length", "generation_logits"])
            draft = _tokens(draft_out)
            if draft:
                target_inputs["draft_input_ids"] = np.array([draft], np.int32)
                if use_logits and "generation_logits" in draft_out:
                    logits = draft_out["generation_logits"].reshape(-1, draft_out["generation_logits"].shape[-1])
                    target_inputs["draft_logits"] = logits[None, : len(draft)]
        target_inputs["request_output_len"] = np.array([[max(draft_len, 0) + 1]], np.int32)
        new = _tokens(_generate(bls, bls.llm_name, target_inputs, ["output_ids", "sequence_length"]))
        new = new[: max_tokens - len(generated)]
        if end_id in new:
            new = new[: new.index(end_id) + 1]
        generated += new
        delta = decoder.push(new)
        text += delta
        hit = next((w for w in stop_words if w in text), None)
        if streaming and delta:
            yield bls._response(delta, {})
        if not new or (new and new[-1] == end_id) or hit:
            break
    tail = decoder.push([], final=True)
    text += tail
    if streaming:
        if tail:
            yield bls._response(tail, {})
        return
    if "exclude_input_in_output" in inputs:
        exclude = bool(np.asarray(inputs["exclude_input_in_output"]).reshape(-1)[0])
    else:  # the tensorrt_llm model's own default decides, as for a plain request
        exclude = _model_excludes_input(bls, base, prompt)
    tokens = generated if exclude else prompt + generated
    out = {"output_ids": np.array([[tokens]], np.int32),
           "sequence_length": np.array([[len(tokens)]], np.int32)}
    yield bls._final_response_from(out, llm_inputs, stop_words, inputs)


def _model_excludes_input(bls, base: dict, prompt: list[int]) -> bool:
    """Ask the target model for one token without exclude_input_in_output: does its
    default leave the prompt out of the output?"""
    probe = {**base, "input_ids": np.array([prompt], np.int32),
             "input_lengths": np.array([[len(prompt)]], np.int32),
             "request_output_len": np.array([[1]], np.int32)}
    return len(_tokens(_generate(bls, bls.llm_name, probe, ["output_ids", "sequence_length"]))) <= 1
