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


_SEEDS = ("seed", "random_seed")
_METRICS = ("acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens")


def _round_seeds(base: dict, round_index: int) -> dict:
    """A seeded request restarts its generator with every new target/draft request: move
    the seed on each round so rounds do not replay the same random numbers (draft and
    target of one round share it, which only couples their choices)."""
    out = {}
    for name in _SEEDS:
        if name in base and np.asarray(base[name]).size:
            seed = int(np.asarray(base[name]).reshape(-1)[0])
            out[name] = np.array([[(seed + round_index) % 2**63]], np.uint64)
    return out


def _flag(inputs: dict, name: str) -> bool:
    return bool(np.asarray(inputs.get(name, [[False]])).reshape(-1)[0])


def run_draft_target(bls, inputs: dict, llm_inputs: dict, num_draft: int, stop_words: list[str]):
    """Yield the BLS responses (deltas when streaming, one final text otherwise). With
    return_perf_metrics the last response carries acceptance_rate and the draft counts
    summed over the rounds."""
    from llmserve.backends.tensorrtllm.text import IncrementalDecoder

    streaming = _flag(inputs, "stream")
    use_logits = _flag(inputs, "use_draft_logits")
    want_metrics = _flag(inputs, "return_perf_metrics") or _flag(inputs, "return_kv_cache_reuse_stats")
    prompt_len = int(np.asarray(llm_inputs["input_lengths"]).reshape(-1)[0])
    prompt = np.asarray(llm_inputs["input_ids"]).reshape(-1)[:prompt_len].tolist()
    max_tokens = int(np.asarray(llm_inputs["request_output_len"]).reshape(-1)[0])
    end_id = int(np.asarray(llm_inputs.get("end_id", [[-1]])).reshape(-1)[0])
    base = {k: v for k, v in llm_inputs.items() if k not in ("streaming", "exclude_input_in_output")}
    generated: list[int] = []
    drafted = accepted = 0
    decoder = IncrementalDecoder(bls._decode_many)
    text = ""
    round_index = 0
    while len(generated) < max_tokens:
        current = prompt + generated
        step = {**base, "input_ids": np.array([current], np.int32),
                "input_lengths": np.array([[len(current)]], np.int32),
                "exclude_input_in_output": np.array([[True]]),
                **_round_seeds(base, round_index)}
        round_index += 1
        draft_len = min(num_draft, max_tokens - len(generated) - 1)
        target_inputs = {**step, "return_perf_metrics": np.array([[True]])}
        if draft_len > 0:
            draft_req = {**step, "request_output_len": np.array([[draft_len]], np.int32)}
            if use_logits:  # the draft's raw logits: the target processes them like its own
                draft_req["return_generation_logits"] = np.array([[True]])
            draft_out = _generate(bls, bls.draft_name, draft_req, ["output_ids", "sequence_length", "generation_logits"])
            draft = _tokens(draft_out)
            if draft:
                target_inputs["draft_input_ids"] = np.array([draft], np.int32)
                if use_logits:
                    logits = draft_out["generation_logits"]
                    logits = logits.reshape(-1, logits.shape[-1])[: len(draft)]
                    if logits.shape[0] != len(draft):
                        raise RuntimeError(f"draft model '{bls.draft_name}' returned {logits.shape[0]} "
                                           f"generation logits rows for {len(draft)} tokens")
                    target_inputs["draft_logits"] = logits[None].astype(np.float32)
        want = max(draft_len, 0) + 1
        target_inputs["request_output_len"] = np.array([[want]], np.int32)
        target_out = _generate(bls, bls.llm_name, target_inputs, ["output_ids", "sequence_length", *_METRICS])
        drafted += int(np.asarray(target_out.get("total_draft_tokens", 0)).reshape(-1)[0])
        accepted += int(np.asarray(target_out.get("total_accepted_draft_tokens", 0)).reshape(-1)[0])
        new = _tokens(target_out)[: max_tokens - len(generated)]
        if end_id in new:
            new = new[: new.index(end_id) + 1]
        generated += new
        delta = decoder.push(new)
        text += delta
        hit = next((w for w in stop_words if w in text), None)
        if streaming and delta:
            yield bls._response(delta, {})
        # fewer tokens than asked for: the target stopped (end_id or a stop word)
        if len(new) < want or new[-1] == end_id or hit:
            break
    metrics = {}
    if want_metrics:
        metrics = {"acceptance_rate": np.array([[accepted / drafted if drafted else 0.0]], np.float32),
                   "total_accepted_draft_tokens": np.array([[accepted]], np.int32),
                   "total_draft_tokens": np.array([[drafted]], np.int32)}
    tail = decoder.push([], final=True)
    text += tail
    if streaming:
        if tail or metrics:
            yield bls._response(tail, metrics)
        return
    if "exclude_input_in_output" in inputs:
        exclude = bool(np.asarray(inputs["exclude_input_in_output"]).reshape(-1)[0])
    else:  # the tensorrt_llm model's own default decides, as for a plain request
        exclude = _model_excludes_input(bls, base, prompt)
    tokens = generated if exclude else prompt + generated
    out = {"output_ids": np.array([[tokens]], np.int32),
           "sequence_length": np.array([[len(tokens)]], np.int32), **metrics}
    yield bls._final_response_from(out, llm_inputs, stop_words, inputs)


def _model_excludes_input(bls, base: dict, prompt: list[int]) -> bool:
    """Ask the target model for one token without exclude_input_in_output: does its
    default leave the prompt out of the output?"""
    probe = {**base, "input_ids": np.array([prompt], np.int32),
             "input_lengths": np.array([[len(prompt)]], np.int32),
             "request_output_len": np.array([[1]], np.int32)}
    return len(_tokens(_generate(bls, bls.llm_name, probe, ["output_ids", "sequence_length"]))) <= 1
