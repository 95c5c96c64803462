"""From a validated OpenAI request to GenParams: max_tokens defaulting to the context
left (max_position_embeddings minus the prompt), context-length checks, per-choice
seeds and logit_bias keys."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from llmserve.frontends.openai.errors import bad_request
from llmserve.frontends.openai.generation import GenParams
from llmserve.frontends.openai.models_discovery import TextModel
from llmserve.frontends.openai.protocol import _SamplingRequest
from llmserve.frontends.openai.structured import Guide

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 16  # Triton's OpenAI frontend default, for models of unknown context


def max_tokens_for(model: TextModel, requested: int | None, prompt_tokens: int,
                   prompt_param: str) -> int:
    """The request's max_tokens, or the context left; 400 when the prompt (plus
    max_tokens) does not fit the model's context."""
    ctx = model.max_model_len
    if ctx is not None and prompt_tokens >= ctx:
        raise bad_request(
            f"This model's maximum context length is {ctx} tokens, but the prompt has "
            f"{prompt_tokens} tokens.", param=prompt_param)
    if requested is None:
        return ctx - prompt_tokens if ctx is not None else DEFAULT_MAX_TOKENS
    if ctx is not None and prompt_tokens + requested > ctx:
        raise bad_request(
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} "
            "for the completion). Please reduce the prompt or max_tokens.", param="max_tokens")
    return requested


def logit_bias_ids(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float] | None:
    if not bias:
        return None
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"logit_bias keys must be token ids, got '{key}'",
                              param="logit_bias") from None
        if not 0 <= token < vocab_size:
            raise bad_request(f"logit_bias token id {token} is out of range", param="logit_bias")
        if not -100.0 <= value <= 100.0:
            raise bad_request("logit_bias values must be in [-100, 100]", param="logit_bias")
        out[token] = float(value)
    return out


def gen_params(req: _SamplingRequest, max_tokens: int, tokenizer: Any, *, logprobs: bool,
               top_logprobs: int, prompt_logprobs: bool = False,
               guide: Guide | None = None) -> GenParams:
    """GenParams shared by the choices of a request (seed is per choice: see with_seed);
    guide: the request's structured output (request_guide()) or its tool-call guide."""
    bias = logit_bias_ids(getattr(req, "logit_bias", None), len(tokenizer))
    if req.min_tokens is not None and req.min_tokens > max_tokens:
        raise bad_request("min_tokens must not exceed max_tokens", param="min_tokens")
    return GenParams(
        max_tokens=max(1, max_tokens),  # max_tokens=0 (echo scoring) still runs one step
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        stop=req.stop_words(),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        prompt_logprobs=prompt_logprobs,
        logit_bias=bias,
        stream=req.stream,
        lora_task_id=req.lora_task_id,
        guide=guide,
    )


def with_seed(params: GenParams, index: int) -> GenParams:
    """Choice `index` of n: a distinct but reproducible seed (seed + index)."""
    if params.seed is None or index == 0:
        return params
    return replace(params, seed=(params.seed + index) % 2**64)
