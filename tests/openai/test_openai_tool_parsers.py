"""Tool-call parsing (llmserve/frontends/openai/tool_parsers.py, tools.py): each chat
template's format, streamed in random pieces, gives exactly the calls and content of the
whole text; the format is picked from the template; auto's structural-tag guide leaves
text free and makes a begun call a valid call of one of the tools."""

from __future__ import annotations

import random

import pytest
from llm_fixtures import EOS_ID, build_tokenizer

from llmserve.frontends.openai.protocol import ChatCompletionRequest
from llmserve.frontends.openai.tool_parsers import (
    JsonCallsParser,
    NamedCallParser,
    TaggedParser,
    collect,
    parse_all,
)
from llmserve.frontends.openai.tools import template_format, tool_plan

CASES = [
    (lambda: TaggedParser("<tool_call>", "</tool_call>"),
     'Let me see.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
     '"n": [1, {"a": "}"}]}}\n</tool_call>\n<tool_call>\n{"arguments": {"x": 1}, '
     '"name": "f2"}\n</tool_call>',
     "Let me see.", [("get_weather", '{"city": "Paris", "n": [1, {"a": "}"}]}'), ("f2", '{"x": 1}')]),
    (lambda: TaggedParser("[TOOL_CALLS]", None),
     'ok [TOOL_CALLS] [{"name": "a", "arguments": {"q": "x\\"y"}}, {"name": "b"}]',
     "ok", [("a", '{"q": "x\\"y"}'), ("b", "{}")]),
    (lambda: JsonCallsParser(),
     ' <|python_tag|>{"name": "f", "parameters": {"k": 3}}; {"name": "g", "parameters": 7}',
     None, [("f", '{"k": 3}'), ("g", "7")]),
    (lambda: JsonCallsParser(), 'Plain words {"name": 1}', 'Plain words {"name": 1}', []),
    (lambda: JsonCallsParser(always_calls=True),
     '[{"name": "f", "parameters": {"a": "b"}}, {"name": "g", "parameters": {}}]',
     None, [("f", '{"a": "b"}'), ("g", "{}")]),
    (lambda: NamedCallParser("f"), '{"a": 1}', None, [("f", '{"a": 1}')]),
    (lambda: TaggedParser("<tool_call>", "</tool_call>"), "no calls <tool", "no calls <tool", []),
]


@pytest.mark.parametrize("make,text,content,calls", CASES)
def test_streamed_pieces_equal_the_whole(make, text, content, calls):
    whole = parse_all(make(), text)
    assert whole[0] == content
    assert [(c.name, c.arguments) for c in whole[1]] == calls
    for seed in range(25):
        rng, parser, events, i = random.Random(seed), make(), [], 0
        while i < len(text):
            n = rng.randint(1, 6)
            events += parser.feed(text[i:i + n])
            i += n
        streamed = collect(events + parser.finish())
        assert streamed[0] == whole[0]
        assert [(c.name, c.arguments) for c in streamed[1]] == calls


def test_a_cut_off_call_is_broken():
    parser = TaggedParser("<tool_call>", "</tool_call>")
    parse_all(parser, '<tool_call>\n{"name": "f", "arguments": {"a": ')
    assert parser.broken


class _Tok:
    def __init__(self, template):
        self.chat_template = template


def test_format_from_template():
    assert template_format(_Tok("{{ '<tool_call>' }}")) == "hermes"
    assert template_format(_Tok({"default": "[TOOL_CALLS] {{ x }}"})) == "mistral"
    assert template_format(_Tok("<|python_tag|>{{ x }}")) == "llama3_json"
    assert template_format(_Tok(None)) == "hermes"


def test_auto_guide_leaves_text_free_and_checks_begun_calls(tmp_path):
    from llmserve.llm import GuidedDecodingParams
    from llmserve.llm.guided import GuideCompiler

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}],
                                tools=tools)
    plan = tool_plan(req, _Tok("<tool_call>"), guided=False)
    assert plan.mode == "auto" and plan.guide.type == "structural_tag"
    build_tokenizer(tmp_path)  # the tokenizer files the compiler reads
    compiler = GuideCompiler(None, tmp_path, 320)
    params = GuidedDecodingParams(plan.guide.type, plan.guide.text)
    matcher = compiler.matcher(compiler.prepare(params).result(), EOS_ID, 200).matcher
    assert matcher.accept_string("It is sunny? ")
    assert matcher.accept_string('<tool_call>\n{"name": "get_weather", "arguments": ')
    assert not matcher.fork().accept_string('{"town"')
    assert matcher.accept_string('{"city": "Bath"}}\n</tool_call>')
    assert matcher.is_completed()
