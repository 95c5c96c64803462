"""One generation on a text model: OpenAI sampling fields mapped by name onto the inputs
the model declares, the InferenceRequest run through the server, and its responses
turned into text deltas with stop strings, token counts and log probs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmserve.core.datatypes import from_api_name
from llmserve.core.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from llmserve.frontends.openai.errors import bad_request
from llmserve.frontends.openai.logprobs import TokenLogprob, prompt_logprobs, step_logprobs
from llmserve.frontends.openai.models_discovery import TextModel
from llmserve.frontends.openai.stop_strings import StopChecker
from llmserve.frontends.openai.structured import Guide

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class GenParams:
    """Sampling and output options of one generation, already validated."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False  # per-token log probs of the chosen tokens
    top_logprobs: int = 0
    prompt_logprobs: bool = False  # echo + logprobs: log probs of the prompt tokens
    logit_bias: dict[int, float] | None = None
    stream: bool = False  # the client streams: a decoupled model streams too
    lora_task_id: int | None = None
    guide: Guide | None = None  # structured output / tool calls


@dataclass(slots=True)
class Delta:
    """What one model response adds to a choice."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    completion_tokens: int = 0  # total so far
    finish_reason: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


def _first_declared(model: TextModel, *names: str) -> str | None:
    return next((n for n in names if model.has_input(n)), None)


def model_inputs(model: TextModel, prompt: str, p: GenParams, tokenizer: Any) -> dict[str, Any]:
    """Input name -> value (scalar or list) for the inputs the model declares; a field
    the user set that the model cannot take is a 400 naming it."""
    values: dict[str, Any] = {"text_input": prompt, "max_tokens": p.max_tokens}

    def put(param: str, value: Any, *names: str) -> None:
        name = _first_declared(model, *names)
        if name is None:
            raise bad_request(f"model '{model.name}' does not support '{param}' "
                              f"(no input {' or '.join(names)})", param=param)
        values[name] = value

    if model.decoupled and model.has_input("stream") and p.stream:
        values["stream"] = True
    if model.has_input("exclude_input_in_output"):
        # the text, token counts and log probs must be the completion's alone, whatever the
        # model's default (the stock tensorrt_llm leaves it unset: the prompt is echoed);
        # `echo` is this layer's, with the prompt's own log probs
        values["exclude_input_in_output"] = True
    greedy = p.temperature == 0.0 or p.top_k == 1
    if greedy:
        if model.has_input("top_k"):
            values["top_k"] = 1
        elif model.has_input("temperature"):
            values["temperature"] = 0.0
    else:
        temperature = 1.0 if p.temperature is None else p.temperature
        if model.has_input("temperature"):
            values["temperature"] = temperature
        elif p.temperature is not None:
            put("temperature", temperature, "temperature")
        top_k = p.top_k if p.top_k and p.top_k > 0 else None
        if top_k is not None:
            put("top_k", top_k, "top_k")
        if p.top_p is not None:
            put("top_p", p.top_p, "top_p")
        elif top_k is None and model.has_input("top_p"):
            # the executor samples only with top_k > 1 or top_p > 0: plain temperature
            # sampling is top_p = 1.0
            values["top_p"] = 1.0
    for param, value, names in (
        ("seed", p.seed, ("seed", "random_seed")),
        ("presence_penalty", p.presence_penalty, ("presence_penalty",)),
        ("frequency_penalty", p.frequency_penalty, ("frequency_penalty",)),
        ("repetition_penalty", p.repetition_penalty, ("repetition_penalty",)),
        ("min_tokens", p.min_tokens, ("min_tokens", "min_length")),
        ("lora_task_id", p.lora_task_id, ("lora_task_id",)),
    ):
        if value is not None:
            put(param, value, *names)
    if p.ignore_eos:
        put("ignore_eos", -1, "end_id")
    if p.stop and model.has_input("stop_words"):
        values["stop_words"] = list(p.stop)  # lets the model stop early; text check is ours
    if p.logprobs or p.top_logprobs:
        if "output_log_probs" not in model.outputs:
            raise bad_request(f"model '{model.name}' has no output_log_probs output",
                              param="logprobs")
        put("logprobs", True, "return_log_probs")
    if p.top_logprobs:
        if "generation_logits" not in model.outputs:
            raise bad_request(f"model '{model.name}' has no generation_logits output",
                              param="top_logprobs")
        put("top_logprobs", True, "return_generation_logits")
    if p.prompt_logprobs:
        if "context_logits" not in model.outputs:
            raise bad_request(f"model '{model.name}' has no context_logits output", param="echo")
        put("echo", True, "return_context_logits")
    if p.logit_bias:
        words, weights = _bias_words(tokenizer, p.logit_bias)
        put("logit_bias", words, "embedding_bias_words")
        put("logit_bias", weights, "embedding_bias_weights")
    if p.guide is not None:
        put("response_format", p.guide.type, "guided_decoding_guide_type")
        if p.guide.text:
            put("response_format", p.guide.text, "guided_decoding_guide")
    for name in ("return_num_input_tokens", "return_num_output_tokens"):
        if model.has_input(name):
            values[name] = True
    return values


def _bias_words(tokenizer: Any, bias: dict[int, float]) -> tuple[list[str], list[float]]:
    """logit_bias as embedding-bias words: each token id as the text that encodes to it."""
    words, weights = [], []
    for token_id, weight in bias.items():
        word = tokenizer.decode([token_id])
        if tokenizer.encode(word, add_special_tokens=False) != [token_id]:
            raise bad_request(f"logit_bias token {token_id} cannot be expressed as a bias word "
                              "for this model's tokenizer", param="logit_bias")
        words.append(word)
        weights.append(float(weight))
    return words, weights


def wanted_outputs(model: TextModel, p: GenParams) -> list[RequestedOutput]:
    """The outputs deltas() reads, of those the model declares: a model set builds and
    passes on each streamed token only these."""
    names = ["text_output", "output_log_probs", "num_input_tokens", "num_output_tokens"]
    if p.top_logprobs:
        names.append("generation_logits")
    if p.prompt_logprobs:
        names.append("context_logits")
    return [RequestedOutput(n) for n in names if n in model.outputs]


def build_request(model: TextModel, values: dict[str, Any], request_id: str = "",
                  outputs: list[RequestedOutput] | None = None) -> InferenceRequest:
    inputs = {name: _tensor(model, name, value) for name, value in values.items()}
    return InferenceRequest(model_name=model.name, inputs=inputs, id=request_id,
                            requested_outputs=outputs)


def _tensor(model: TextModel, name: str, value: Any) -> Tensor:
    spec = model.inputs[name]
    items = value if isinstance(value, list) else [value]
    if spec.datatype == "BYTES":
        data = np.array([str(v).encode("utf-8") for v in items], dtype=object)
    else:
        dtype = from_api_name(spec.datatype).numpy
        assert dtype is not None
        data = np.array(items).astype(dtype)
    # the model's dims with every leading dim 1 and the last one holding the values
    shape = [1] * (len(spec.dims) - 1) + [len(items)] if spec.dims else []
    data = data.reshape(shape)
    if spec.batched:
        data = data[None, ...]
    return Tensor(name, spec.datatype, data)


def _text(response: InferenceResponse) -> str:
    tensor = response.output("text_output")
    if tensor is None:
        return ""
    parts = []
    for item in np.asarray(tensor.data).reshape(-1):
        parts.append(item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item))
    return "".join(parts)


def _width(response: InferenceResponse) -> int | None:
    """Tokens this response carries: the last dim of output_log_probs (beams x tokens)."""
    tensor = response.output("output_log_probs")
    if tensor is None:
        return None
    return int(np.asarray(tensor.data).shape[-1]) if np.asarray(tensor.data).ndim else None


def _scalar_output(response: InferenceResponse, name: str) -> int:
    tensor = response.output(name)
    if tensor is None or np.asarray(tensor.data).size == 0:
        return 0
    return int(np.asarray(tensor.data).reshape(-1)[0])


class Generation:
    """A started generation: start() submits it (request errors raise there, before the
    client gets a status), deltas() yields its Deltas, close() cancels what is left."""

    def __init__(self, server: Any, model: TextModel, tokenizer: Any, prompt: str,
                 params: GenParams, prompt_ids: list[int], request_id: str = ""):
        self.server = server
        self.model = model
        self.tokenizer = tokenizer
        self.params = params
        self.prompt_ids = prompt_ids
        self.request = build_request(model, model_inputs(model, prompt, params, tokenizer),
                                     request_id, wanted_outputs(model, params))
        self._agen: AsyncIterator[InferenceResponse] | None = None
        self._first: InferenceResponse | None = None
        self.cum_logprob = 0.0
        self._done = False

    async def start(self) -> None:
        self._agen = self.server.infer(self.request)
        self._first = await anext(self._agen, None)
        if self._first is not None and self._first.error is not None:
            raise self._first.error

    async def close(self) -> None:
        """Cancel the request unless it finished; release the server's generator."""
        if self._agen is None:
            return
        if not self._done:
            self.request.cancel.cancel()
        await self._agen.aclose()  # type: ignore[attr-defined]

    async def _responses(self) -> AsyncIterator[InferenceResponse]:
        assert self._agen is not None
        response = self._first
        while response is not None:
            if response.error is not None:
                raise response.error
            yield response
            if response.final:
                self._done = True
                return
            response = await anext(self._agen, None)
        self._done = True

    async def deltas(self) -> AsyncIterator[Delta]:
        p = self.params
        stop = StopChecker(p.stop)
        seen, full, tokens, counted = "", "", 0, True
        prompt_done = False
        try:
            async for response in self._responses():
                piece = _text(response)
                if self.model.accumulate:
                    piece, seen = piece[len(seen):] if piece.startswith(seen) else piece, piece
                full += piece
                width = _width(response)
                if width is not None:
                    tokens += width
                elif response.output("text_output") is not None:
                    counted = False  # no per-token output: count by tokenizing the text
                reported = _scalar_output(response, "num_output_tokens")
                tokens = max(tokens, reported)
                delta = Delta(completion_tokens=tokens)
                if p.logprobs and width:
                    delta.logprobs = step_logprobs(self.tokenizer, response, piece, width,
                                                   p.top_logprobs)
                    self.cum_logprob += sum(e.logprob or 0.0 for e in delta.logprobs)
                if p.prompt_logprobs and not prompt_done:
                    delta.prompt_logprobs = prompt_logprobs(
                        self.tokenizer, self.prompt_ids, response, p.top_logprobs)
                    prompt_done = delta.prompt_logprobs is not None
                delta.text = stop.push(piece)
                if stop.stopped:
                    delta.finish_reason = "stop"
                    if not counted:
                        delta.completion_tokens = self._count(full)
                    yield delta
                    return
                if delta.text or delta.logprobs or delta.prompt_logprobs:
                    yield delta
            if not counted:
                tokens = self._count(full)
            finish = "length" if tokens >= p.max_tokens else "stop"
            yield Delta(text=stop.flush(), completion_tokens=tokens, finish_reason=finish)
        finally:
            await self.close()

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0
