"""POST /v1/chat/completions: messages (tool calls and tool results too) rendered with
the tokenizer's chat template, n choices, logprobs / top_logprobs, usage, structured
output and tool calls (tools.py), and the streamed chat.completion.chunk deltas (role in
the first delta of each choice, content or tool_calls, finish_reason in its last)."""

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
    FunctionCall,
    ToolCall,
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
from llmserve.frontends.openai.tool_parsers import CallStart, Content, Event, parse_all
from llmserve.frontends.openai.tools import (
    ToolPlan,
    template_message,
    template_tools,
    tool_plan,
)


def render_prompt(req: ChatCompletionRequest, model: TextModel, tok: Any) -> str:
    """The conversation through the tokenizer's chat template (400 when it has none)."""
    if not getattr(tok, "chat_template", None):
        raise bad_request(f"model '{model.name}' has no chat template (its tokenizer defines "
                          "none); use /v1/completions", param="messages")
    try:
        conversation = [template_message(m) for m in req.messages]
    except ValueError as exc:
        raise bad_request(str(exc), param="messages") from None
    kwargs = dict(req.chat_template_kwargs or {})
    tools = template_tools(req)
    if tools is not None:
        kwargs["tools"] = tools
    try:
        text = tok.apply_chat_template(conversation, tokenize=False,
                                       add_generation_prompt=req.add_generation_prompt,
                                       **kwargs)
    except Exception as exc:  # noqa: BLE001 - jinja errors (raise_exception) are the user's
        raise bad_request(f"cannot apply the chat template: {exc}", param="messages") from None
    bos = tok.bos_token
    if model.add_special_tokens and bos and text.startswith(bos) and _adds_bos(tok):
        text = text[len(bos):]  # the model's tokenizer adds BOS itself
    return text


def _adds_bos(tok: Any) -> bool:
    cached = getattr(tok, "_llmserve_adds_bos", None)  # one probe per tokenizer
    if cached is None:
        ids = tok.encode("a", add_special_tokens=True)
        cached = tok._llmserve_adds_bos = bool(ids) and ids[0] == tok.bos_token_id
    return cached


async def create_chat_completion(server: Any, catalog: ModelCatalog, http: Request,
                                 req: ChatCompletionRequest) -> Response:
    model = catalog.resolve(req.model)
    guide = request_guide(req)
    tok = await asyncio.to_thread(catalog.tokenizer, model)
    plan = tool_plan(req, tok, guided=guide is not None)
    prompt = render_prompt(req, model, tok)
    ids = tok.encode(prompt, add_special_tokens=model.add_special_tokens)
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if requested == 0:
        raise bad_request(f"{param} must be at least 1", param=param)
    max_tokens = max_tokens_for(model, requested, len(ids), "messages")
    params = gen_params(req, max_tokens, tok, logprobs=req.logprobs,
                        top_logprobs=req.top_logprobs or 0, guide=guide or plan.guide)
    rid = new_id("chatcmpl")
    gens = [Generation(server, model, tok, prompt, with_seed(params, i), ids, rid)
            for i in range(req.n)]
    await start_all(http, gens)
    if req.stream:
        return sse_response(_stream(req, rid, gens, len(ids), plan), lambda: cancel_all(gens))
    results = await collect(http, gens)
    choices = []
    for i, r in enumerate(results):
        message, finish = ChatMessageOut(content=r.text), r.finish_reason
        parser = plan.parser()
        if parser is not None:
            content, calls = parse_all(parser, r.text)
            if calls and not parser.broken:
                message = ChatMessageOut(content=content, tool_calls=[
                    ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                    for c in calls])
                finish = "tool_calls"
        choices.append(ChatChoice(
            index=i, message=message,
            logprobs=chat_logprobs(r.logprobs) if req.logprobs else None,
            finish_reason=finish))  # type: ignore[arg-type]
    usage = Usage.of(len(ids), sum(r.completion_tokens for r in results))
    body = ChatCompletionResponse(id=rid, model=req.model, choices=choices, usage=usage)
    return JSONResponse(body.model_dump())


async def _stream(req: ChatCompletionRequest, rid: str, gens: list[Generation],
                  prompt_tokens: int, plan: ToolPlan) -> AsyncIterator[ChatCompletionChunk | str]:
    def chunk(choice: ChatStreamChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=rid, model=req.model, choices=[choice])

    for i in range(len(gens)):
        yield chunk(ChatStreamChoice(index=i, delta=ChatDelta(role="assistant", content="")))
    contents = [TextChunks(lambda text, i=i: chunk(ChatStreamChoice(index=i, delta=ChatDelta(content=text))))
                for i in range(len(gens))]
    tokens = [0] * len(gens)
    parsers = [plan.parser() for _ in gens]
    called = [False] * len(gens)
    async for i, delta in merge(gens):
        tokens[i] = max(tokens[i], delta.completion_tokens)
        logprobs = chat_logprobs(delta.logprobs) if req.logprobs and delta.logprobs else None
        parser = parsers[i]
        if parser is None:
            if logprobs is None and delta.text:
                yield contents[i](delta.text)
            elif delta.text or delta.logprobs:
                yield chunk(ChatStreamChoice(index=i, delta=ChatDelta(content=delta.text),
                                             logprobs=logprobs))
        else:
            events = parser.feed(delta.text) if delta.text else []
            if delta.finish_reason is not None:
                events += parser.finish()
            for n, event in enumerate(events):
                called[i] |= not isinstance(event, Content)
                yield chunk(ChatStreamChoice(index=i, delta=event_delta(event),
                                             logprobs=logprobs if n == 0 else None))
            if not events and logprobs is not None:
                yield chunk(ChatStreamChoice(index=i, delta=ChatDelta(), logprobs=logprobs))
        if delta.finish_reason is not None:
            finish = "tool_calls" if called[i] and not parser.broken else delta.finish_reason
            yield chunk(ChatStreamChoice(index=i, delta=ChatDelta(),
                                         finish_reason=finish))  # type: ignore[arg-type]
    if req.include_usage():
        yield ChatCompletionChunk(id=rid, model=req.model, choices=[],
                                  usage=Usage.of(prompt_tokens, sum(tokens)))


def event_delta(event: Event) -> ChatDelta:
    """One parser event as a chat delta (OpenAI's delta.tool_calls shape)."""
    if isinstance(event, Content):
        return ChatDelta(content=event.text)
    if isinstance(event, CallStart):
        return ChatDelta(tool_calls=[{"index": event.index, "id": event.id, "type": "function",
                                      "function": {"name": event.name, "arguments": ""}}])
    return ChatDelta(tool_calls=[{"index": event.index, "function": {"arguments": event.text}}])
