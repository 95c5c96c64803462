"""POST /v1/completions: prompts (text, lists, token ids) to generations, n and best_of
choices, echo, legacy logprobs, usage, and the streamed text_completion chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.frontends.openai.errors import bad_request
from llmserve.frontends.openai.generation import Generation
from llmserve.frontends.openai.logprobs import TokenLogprob, completion_logprobs
from llmserve.frontends.openai.models_discovery import ModelCatalog, TextModel
from llmserve.frontends.openai.protocol import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
    new_id,
)
from llmserve.frontends.openai.request_params import gen_params, max_tokens_for, with_seed
from llmserve.frontends.openai.streaming import (
    TextChunks,
    cancel_all,
    collect,
    merge,
    sse_response,
    start_all,
)
from llmserve.frontends.openai.structured import request_guide


def prompt_texts(req: CompletionRequest, model: TextModel, tok: Any) -> list[tuple[str, list[int]]]:
    """(text sent as text_input, its token ids as the model tokenizes it) per prompt."""
    raw = req.prompt
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        items = [raw]
    else:
        items = list(raw)
    out = []
    for item in items:
        if isinstance(item, list):
            if not item:
                raise bad_request("token id prompts must not be empty", param="prompt")
            if any(not 0 <= t < len(tok) for t in item):
                raise bad_request("prompt token id out of the vocabulary", param="prompt")
            ids = list(item)
            if model.add_special_tokens and tok.bos_token_id is not None and ids[0] == tok.bos_token_id:
                ids = ids[1:]  # the model's tokenizer adds it again
            item = tok.decode(ids, skip_special_tokens=False)
        out.append((item, tok.encode(item, add_special_tokens=model.add_special_tokens)))
    return out


async def create_completion(server: Any, catalog: ModelCatalog, http: Request,
                            req: CompletionRequest) -> Response:
    model = catalog.resolve(req.model)
    if req.suffix:
        raise bad_request("suffix is not supported: the served models are not fill-in-the-"
                          "middle models", param="suffix")
    best_of = req.best_of or req.n
    if best_of < req.n:
        raise bad_request("best_of must be at least n", param="best_of")
    if req.stream and best_of > req.n:
        raise bad_request("best_of > n cannot be streamed", param="best_of")
    guide = request_guide(req)
    tok = await asyncio.to_thread(catalog.tokenizer, model)
    prompts = prompt_texts(req, model, tok)
    want_lp = req.logprobs is not None
    gens: list[Generation] = []
    rid = new_id("cmpl")
    for text, ids in prompts:
        max_tokens = max_tokens_for(model, req.max_tokens, len(ids), "prompt")
        params = gen_params(req, max_tokens, tok, logprobs=want_lp or best_of > req.n,
                            top_logprobs=req.logprobs or 0,
                            prompt_logprobs=req.echo and want_lp, guide=guide)
        gens += [Generation(server, model, tok, text, with_seed(params, i), ids, rid)
                 for i in range(best_of)]
    await start_all(http, gens)
    view = _View(req, prompts, best_of)
    if req.stream:
        return sse_response(_stream(view, rid, gens), lambda: cancel_all(gens))
    results = await collect(http, gens)
    choices = []
    completion_tokens = sum(r.completion_tokens for r in results)
    for p, _ in enumerate(prompts):
        group = list(range(p * best_of, (p + 1) * best_of))
        if best_of > req.n:
            group.sort(key=lambda g: -gens[g].cum_logprob)
        for j, g in enumerate(group[: req.n]):
            r = results[g]
            text, entries = view.generated(r.text, r.logprobs)
            prefix, pre_entries = view.echo(p, r.prompt_logprobs)
            choices.append(CompletionChoice(
                index=p * req.n + j, text=prefix + text,
                logprobs=completion_logprobs(pre_entries + entries) if want_lp else None,
                finish_reason=r.finish_reason))  # type: ignore[arg-type]
    usage = Usage.of(sum(len(ids) for _, ids in prompts), completion_tokens)
    body = CompletionResponse(id=rid, model=req.model, choices=choices, usage=usage)
    return JSONResponse(body.model_dump())


class _View:
    """How a choice's output is shown: echo prefix, max_tokens=0 (score only)."""

    def __init__(self, req: CompletionRequest, prompts: list[tuple[str, list[int]]], best_of: int):
        self.req = req
        self.prompts = prompts
        self.best_of = best_of
        self.score_only = req.max_tokens == 0

    def generated(self, text: str, entries: list[TokenLogprob]) -> tuple[str, list[TokenLogprob]]:
        if self.score_only:
            return "", []
        return text, entries if self.req.logprobs is not None else []

    def echo(self, prompt: int, prompt_lp: list[TokenLogprob] | None) -> tuple[str, list[TokenLogprob]]:
        if not self.req.echo:
            return "", []
        return self.prompts[prompt][0], list(prompt_lp or [])


async def _stream(view: _View, rid: str, gens: list[Generation]) -> AsyncIterator[CompletionResponse | str]:
    req, n = view.req, view.req.n
    offsets = [0] * len(gens)
    echoed = [False] * len(gens)
    tokens = [0] * len(gens)
    texts: dict[int, TextChunks] = {}
    async for g, delta in merge(gens):
        p = g // view.best_of
        index = p * n + g % view.best_of
        tokens[g] = max(tokens[g], delta.completion_tokens)
        text, entries = view.generated(delta.text, delta.logprobs)
        if req.echo and not echoed[g]:
            prefix, pre = view.echo(p, delta.prompt_logprobs)
            text, entries, echoed[g] = prefix + text, pre + entries, True
        if not text and not entries and delta.finish_reason is None:
            continue
        logprobs = None
        if req.logprobs is not None:
            logprobs = completion_logprobs(entries, offsets[g])
        offsets[g] += len(text)
        if logprobs is None and delta.finish_reason is None:
            if index not in texts:
                texts[index] = TextChunks(lambda t, i=index: CompletionResponse(
                    id=rid, model=req.model, choices=[CompletionChoice(index=i, text=t)]))
            yield texts[index](text)
            continue
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs,
                                  finish_reason=delta.finish_reason)  # type: ignore[arg-type]
        yield CompletionResponse(id=rid, model=req.model, choices=[choice])
    if req.include_usage():
        usage = Usage.of(sum(len(ids) for _, ids in view.prompts), sum(tokens))
        yield CompletionResponse(id=rid, model=req.model, choices=[], usage=usage)
