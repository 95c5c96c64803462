"""The SSE response and the pre-rendered chunks of the streamed paths."""

import asyncio
import json

import pytest
from sse_starlette.sse import SendTimeoutError

from llmserve.frontends.openai.protocol import (
    ChatCompletionChunk,
    ChatDelta,
    ChatStreamChoice,
    CompletionChoice,
    CompletionResponse,
)
from llmserve.frontends.openai.streaming import TextChunks
from llmserve.frontends.sse import EventStream

TEXTS = ["hi", "", ' a "quoted" \\ back\nslash\t', "é中文 \u2028 \x00 \x7f", "\u0000llmserve-text"]


def _chat(text, index=0):
    return ChatCompletionChunk(id="chatcmpl-1", model="m", created=7,
                               choices=[ChatStreamChoice(index=index, delta=ChatDelta(content=text))])


def _completion(text, index=0):
    return CompletionResponse(id="cmpl-1", model="m", created=7,
                              choices=[CompletionChoice(index=index, text=text)])


@pytest.mark.parametrize("render", [_chat, _completion])
def test_text_chunks_are_pydantics_bytes(render):
    chunks = TextChunks(lambda t: render(t, 3))
    for text in TEXTS:
        assert chunks(text) == render(text, 3).model_dump_json()
        assert json.loads(chunks(text))["choices"][0] == json.loads(render(text, 3).model_dump_json())["choices"][0]


def test_text_chunks_render_whole_when_the_marker_is_not_found_once():
    # a model name holding the marker: the template cannot be split, every chunk is rendered
    def render(t):
        return CompletionResponse(id="x", model=TextChunks._MARK, created=7,
                                  choices=[CompletionChoice(index=0, text=t)])

    chunks = TextChunks(render)
    assert chunks._parts is None
    assert chunks("abc") == render("abc").model_dump_json()


def test_event_stream_sends_directly_without_timeout_and_keeps_sse_starlettes_timeout():
    sent = []

    async def send(message):
        sent.append(message)

    async def stuck(message):
        await asyncio.sleep(10)

    async def run():
        stream = EventStream(iter(()))
        await stream._send_with_timeout(send, {"type": "http.response.body", "body": b"x"})
        assert sent == [{"type": "http.response.body", "body": b"x"}]
        timed = EventStream(iter(()), send_timeout=0.05)
        with pytest.raises(SendTimeoutError):
            await timed._send_with_timeout(stuck, {"type": "http.response.body", "body": b"y"})

    asyncio.run(run())
