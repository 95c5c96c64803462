"""POST /v1/chat/completions: messages rendered with the tokenizer's chat template, n
choices, logprobs / top_logprobs, usage, and the streamed chat.completion.chunk deltas
(role in the first delta of each choice, finish_reason in its last)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.frontends.openai.errors import bad_request
from llmserve.frontends.openai.generation import Generation
from llmserve.frontends.openai.logprobs import chat_logprobs
from llmserve.frontends.openai.models_discovery import ModelCatalog, TextModel
from llmserve.frontends.openai.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
    ChatStreamChoice,
    Usage,
    new_id,
)
from llmserve.frontends.openai.request_params import gen_params, max_tokens_for, with_seed
from llmserve.frontends.openai.streaming import cancel_all, collect, merge, sse_response, start_all


def render_prompt(req: ChatCompletionRequest, model: TextModel, tok: Any) -> str:
    """The conversation through the tokenizer's chat template (400 when it has none)."""
    if not getattr(tok, "chat_template", None):
        raise bad_request(f"model '{model.name}' has no chat template (its tokenizer defines "
                          "none); use /v1/completions", param="messages")
    try:
        conversation = [{"role": m.role, "content": m.text()} for m in req.messages]
    except ValueError as exc:
        raise bad_request(str(exc), param="messages") from None
    try:
        text = tok.apply_chat_template(conversation, tokenize=False,
                                       add_generation_prompt=req.add_generation_prompt,
                                       **(req.chat_template_kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - jinja errors (raise_exception) are the user's
        raise bad_request(f"cannot apply the chat template: {exc}", param="messages") from None
    bos = tok.bos_token
    if model.add_special_tokens and bos and text.startswith(bos) and _adds_bos(tok):
        text = text[len(bos):]  # the model's tokenizer adds BOS itself
    return text


def _adds_bos(tok: Any) -> bool:
    ids = tok.encode("a", add_special_tokens=True)
    return bool(ids) and ids[0] == tok.bos_token_id


async def create_chat_completion(server: Any, catalog: ModelCatalog, http: Request,
                                 req: ChatCompletionRequest) -> Response:
    model = catalog.resolve(req.model)
    if req.tools:
        raise bad_request("tools are not supported", param="tools")
    tok = await asyncio.to_thread(catalog.tokenizer, model)
    prompt = render_prompt(req, model, tok)
    ids = tok.encode(prompt, add_special_tokens=model.add_special_tokens)
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if requested == 0:
        raise bad_request(f"{param} must be at least 1", param=param)
    max_tokens = max_tokens_for(model, requested, len(ids), "messages")
    params = gen_params(req, max_tokens, tok, logprobs=req.logprobs,
                        top_logprobs=req.top_logprobs or 0)
    rid = new_id("chatcmpl")
    gens = [Generation(server, model, tok, prompt, with_seed(params, i), ids, rid)
            for i in range(req.n)]
    await start_all(http, gens)
    if req.stream:
        return sse_response(_stream(req, rid, gens, len(ids)), lambda: cancel_all(gens))
    results = await collect(http, gens)
    choices = [
        ChatChoice(index=i, message=ChatMessageOut(content=r.text),
                   logprobs=chat_logprobs(r.logprobs) if req.logprobs else None,
                   finish_reason=r.finish_reason)  # type: ignore[arg-type]
        for i, r in enumerate(results)
    ]
    usage = Usage.of(len(ids), sum(r.completion_tokens for r in results))
    body = ChatCompletionResponse(id=rid, model=req.model, choices=choices, usage=usage)
    return JSONResponse(body.model_dump())


async def _stream(req: ChatCompletionRequest, rid: str, gens: list[Generation],
                  prompt_tokens: int) -> AsyncIterator[ChatCompletionChunk]:
    def chunk(choice: ChatStreamChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=rid, model=req.model, choices=[choice])

    for i in range(len(gens)):
        yield chunk(ChatStreamChoice(index=i, delta=ChatDelta(role="assistant", content="")))
    tokens = [0] * len(gens)
    async for i, delta in merge(gens):
        tokens[i] = max(tokens[i], delta.completion_tokens)
        if delta.text or delta.logprobs:
            yield chunk(ChatStreamChoice(
                index=i, delta=ChatDelta(content=delta.text),
                logprobs=chat_logprobs(delta.logprobs) if req.logprobs else None))
        if delta.finish_reason is not None:
            yield chunk(ChatStreamChoice(index=i, delta=ChatDelta(),
                                         finish_reason=delta.finish_reason))  # type: ignore[arg-type]
    if req.include_usage():
        yield ChatCompletionChunk(id=rid, model=req.model, choices=[],
                                  usage=Usage.of(prompt_tokens, sum(tokens)))
