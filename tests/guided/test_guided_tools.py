"""Tool calls through the openai client: tool_choice named and required generate under a
JSON-schema guide of the tools' parameters and come back as the client's own tool-call
types, streamed (delta.tool_calls with growing arguments) and not, with finish_reason
tool_calls; auto and none give content; tool results and earlier calls go back through
the chat template; unsupported combinations are 400s."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 10},
    "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 6}},
        "required": ["zone"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What is the weather in Bath?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def _check_call(call) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("choice", [NAMED, "required"])
def test_tool_choice_forces_valid_calls(client, choice):
    r = client.chat.completions.create(model="ensemble", messages=MESSAGES, tools=TOOLS,
                                       tool_choice=choice, n=8, temperature=1.0, seed=3,
                                       max_tokens=100)
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and c.message.content is None
        assert c.message.tool_calls, c.message
        for call in c.message.tool_calls:
            _check_call(call)
        if choice == NAMED:
            assert [t.function.name for t in c.message.tool_calls] == ["get_weather"]


@pytest.mark.parametrize("choice", [NAMED, "required"])
def test_streamed_tool_calls_add_up_to_the_unstreamed_ones(aclient, choice):
    kw = dict(model="tensorrt_llm_bls", messages=MESSAGES, tools=TOOLS, tool_choice=choice,
              temperature=1.0, max_tokens=100, parallel_tool_calls=choice != "required")

    async def run(seed):
        c = aclient()
        whole = await c.chat.completions.create(seed=seed, **kw)
        calls: dict[int, dict] = {}
        finish = None
        async for chunk in await c.chat.completions.create(seed=seed, stream=True, **kw):
            delta = chunk.choices[0].delta
            assert not delta.content
            for tc in delta.tool_calls or []:
                if tc.id is not None:  # the first chunk of a call: id, type and name
                    assert tc.type == "function" and tc.function.name
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
                calls[tc.index]["arguments"] += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        return whole, calls, finish

    async def all_seeds():
        return await asyncio.gather(*(run(seed) for seed in range(4)))

    for whole, calls, finish in asyncio.run(all_seeds()):
        assert finish == "tool_calls"
        expected = whole.choices[0].message.tool_calls
        assert [(c.function.name, c.function.arguments) for c in expected] == [
            (calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
        if choice == "required":
            assert len(expected) == 1  # parallel_tool_calls false: one call


def test_auto_and_none_give_content(client):
    for choice in ("auto", "none"):
        r = client.chat.completions.create(model="ensemble", messages=MESSAGES, tools=TOOLS,
                                           tool_choice=choice, temperature=0, max_tokens=12)
        c = r.choices[0]
        assert c.finish_reason in ("stop", "length") and c.message.tool_calls is None
        assert isinstance(c.message.content, str)


def test_tool_results_go_back_through_the_template(client, guided):
    conversation = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Bath", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 12 degrees"},
    ]
    r = client.chat.completions.create(model="ensemble", messages=conversation, tools=TOOLS,
                                       temperature=0, max_tokens=4)
    rendered = guided.tokenizer.apply_chat_template(
        [dict(m) | ({"tool_calls": [{**m["tool_calls"][0], "function": {
            "name": "get_weather", "arguments": {"city": "Bath", "unit": "c"}}}]}
            if m.get("tool_calls") else {}) for m in conversation],
        tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert "<tool_response>\nRain, 12 degrees\n</tool_response>" in rendered
    assert '"arguments": {"city": "Bath", "unit": "c"}' in rendered
    ids = guided.tokenizer.encode(rendered, add_special_tokens=False)
    assert r.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("kw,param,words", [
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "not in tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tool_choice", "cannot be combined"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools", "unique"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "Input should be"),
])
def test_unsupported_tool_combinations_are_400s(client, kw, param, words):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="ensemble", messages=MESSAGES, max_tokens=4, **kw)
    assert words in info.value.body["message"] and info.value.body["param"].startswith(param)
