"""Chat tools: tool_choice as a plan (which guide the generation runs under, which parser
reads its tool calls), the call format picked from the chat template, and the messages
and tools handed to the template.

- none: no tool calls, plain content.
- auto: the model chooses; calls are parsed in the template's format. For the tagged
  formats (Hermes/Qwen, Mistral) a structural-tag guide makes every call the model
  starts a valid call of one of the tools, and leaves the text around them free.
- required: a JSON-schema guide for an array of calls ({"name", "parameters"}) of the
  tools; a named function: a JSON-schema guide of its parameters (the text is the
  call's arguments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llmserve.frontends.openai.errors import bad_request
from llmserve.frontends.openai.protocol import ChatCompletionRequest, ChatMessage, ChatTool
from llmserve.frontends.openai.structured import Guide
from llmserve.frontends.openai.tool_parsers import (
    JsonCallsParser,
    NamedCallParser,
    TaggedParser,
    ToolParser,
)

ANY_OBJECT = {"type": "object"}

# call format -> (begin marker, end marker) of its tagged calls
TAGGED = {"hermes": ("<tool_call>", "</tool_call>"), "mistral": ("[TOOL_CALLS]", None)}


def template_format(tokenizer: Any) -> str:
    """hermes (also Qwen), mistral or llama3_json, from the chat template's text;
    hermes when the template says nothing."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(str(t) for t in template.values())
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or ("ipython" in template and "parameters" in template):
        return "llama3_json"
    return "hermes"


def _parameters(tool: ChatTool) -> dict[str, Any]:
    return tool.function.parameters or {"type": "object", "properties": {}}


def _call_schema(tools: list[ChatTool], args_key: str) -> dict[str, Any]:
    """One call of any of the tools: {"name": <its name>, args_key: <its parameters>}."""
    options = [{
        "type": "object",
        "properties": {"name": {"type": "string", "enum": [t.function.name]},
                       args_key: _parameters(t)},
        "required": ["name", args_key],
    } for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


@dataclass(slots=True)
class ToolPlan:
    mode: str  # none | auto | required | named
    format: str = "hermes"
    name: str | None = None  # the named function
    guide: Guide | None = None

    def parser(self) -> ToolParser | None:
        if self.mode == "none":
            return None
        if self.mode == "named":
            assert self.name is not None
            return NamedCallParser(self.name)
        if self.mode == "required":
            return JsonCallsParser(always_calls=True)
        if self.format in TAGGED:
            return TaggedParser(*TAGGED[self.format])
        return JsonCallsParser()


def _chosen_name(choice: dict[str, Any]) -> str:
    function = choice.get("function") if choice.get("type", "function") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise bad_request("tool_choice must be none, auto, required or "
                          '{"type": "function", "function": {"name": ...}}', param="tool_choice")
    return name


def tool_plan(req: ChatCompletionRequest, tokenizer: Any, guided: bool) -> ToolPlan:
    """The plan for the request's tools and tool_choice; guided: the request has a
    structured-output guide of its own (response_format & co)."""
    tools = req.tools or []
    choice = req.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools", param="tool_choice")
        return ToolPlan("none")
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise bad_request("tool function names must be unique", param="tools")
    fmt = template_format(tokenizer)
    if choice is None or choice == "auto":
        plan = ToolPlan("auto", fmt)
        if fmt in TAGGED and not guided:
            plan.guide = _tagged_guide(fmt, tools)
        return plan
    if choice == "none":
        return ToolPlan("none", fmt)
    if guided:
        raise bad_request("response_format (structured output) cannot be combined with "
                          "tool_choice 'required' or a named function", param="tool_choice")
    if choice == "required":
        array: dict[str, Any] = {"type": "array", "items": _call_schema(tools, "parameters"),
                                 "minItems": 1}
        if req.parallel_tool_calls is False:
            array["maxItems"] = 1
        return ToolPlan("required", fmt, guide=Guide("json_schema", json.dumps(array)))
    name = _chosen_name(choice)  # type: ignore[arg-type]
    tool = next((t for t in tools if t.function.name == name), None)
    if tool is None:
        raise bad_request(f"tool_choice names function '{name}', which is not in tools",
                          param="tool_choice")
    return ToolPlan("named", fmt, name=name,
                    guide=Guide("json_schema", json.dumps(_parameters(tool))))


def _tagged_guide(fmt: str, tools: list[ChatTool]) -> Guide:
    """auto with a tagged format: text is free; a call, once begun, is a valid call."""
    call = _call_schema(tools, "arguments")
    if fmt == "hermes":
        tag = {"begin": "<tool_call>\n", "content": {"type": "json_schema", "json_schema": call},
               "end": "\n</tool_call>"}
        trigger = "<tool_call>"
    else:  # mistral: one array of calls after the marker, to the end
        array = {"type": "array", "items": call, "minItems": 1}
        tag = {"begin": "[TOOL_CALLS]", "content": {"type": "json_schema", "json_schema": array},
               "end": ""}
        trigger = "[TOOL_CALLS]"
    fmt_doc = {"type": "triggered_tags", "triggers": [trigger], "tags": [{"type": "tag", **tag}]}
    return Guide("structural_tag", json.dumps({"type": "structural_tag", "format": fmt_doc}))


def _arguments(value: str | dict[str, Any]) -> Any:
    """Earlier calls' arguments as the templates expect them: a mapping when they are a
    JSON object (Hugging Face's convention), else the text."""
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, dict) else value


def template_message(m: ChatMessage) -> dict[str, Any]:
    """A message for the chat template: assistant tool_calls (content may be null) and
    the tool role's tool_call_id go through."""
    out: dict[str, Any] = {"role": m.role}
    if m.content is None and m.tool_calls:
        out["content"] = None
    else:
        out["content"] = m.text()
    if m.name is not None:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": c.type,
             "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
            for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def template_tools(req: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    if not req.tools:
        return None
    return [t.model_dump(exclude_none=True) for t in req.tools]
