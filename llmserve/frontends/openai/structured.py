"""Structured output fields of an OpenAI request as one guide for the model set's
guided_decoding_guide_type / guided_decoding_guide inputs: OpenAI's response_format
(json_object, json_schema with strict), and vLLM's structured_outputs and guided_*
extras (json, regex, grammar, choice, structural_tag)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llmserve.frontends.openai.errors import bad_request
from llmserve.frontends.openai.protocol import _SamplingRequest

OBJECT_SCHEMA = {"type": "object"}


@dataclass(frozen=True, slots=True)
class Guide:
    """What goes into guided_decoding_guide_type / guided_decoding_guide."""

    type: str  # json | json_schema | regex | ebnf_grammar | structural_tag
    text: str = ""


def _schema_text(schema: Any, param: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise bad_request(f"{param} is not valid JSON: {exc}", param=param) from None
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise bad_request(f"{param} must be a JSON schema object", param=param)
    return json.dumps(schema)


def json_schema_guide(schema: Any, param: str) -> Guide:
    return Guide("json_schema", _schema_text(schema, param))


def choice_guide(choices: Any, param: str) -> Guide:
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise bad_request(f"{param} must be a non-empty list of strings", param=param)
    return Guide("regex", "(" + "|".join(re.escape(c) for c in choices) + ")")


def _response_format(req: _SamplingRequest) -> Guide | None:
    rf = req.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return json_schema_guide(OBJECT_SCHEMA, "response_format")
    if rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.json_schema is None:
            raise bad_request("response_format of type json_schema needs json_schema.schema",
                              param="response_format.json_schema")
        # strict or not, the output follows the schema (with no properties it does not
        # declare, unless it allows additionalProperties)
        return json_schema_guide(rf.json_schema.json_schema, "response_format.json_schema.schema")
    extra = dict(rf.model_extra or {})  # structural_tag: structures + triggers, or format
    if not extra:
        raise bad_request("response_format of type structural_tag needs structures and "
                          "triggers (or format)", param="response_format")
    return Guide("structural_tag", json.dumps({"type": "structural_tag", **extra}))


_STRUCTURED_KEYS = {"json", "regex", "grammar", "choice", "json_object", "structural_tag"}


def _structured_outputs(so: dict[str, Any]) -> list[Guide]:
    unknown = set(so) - _STRUCTURED_KEYS - {"disable_any_whitespace", "whitespace_pattern",
                                            "disable_fallback", "disable_additional_properties",
                                            "backend"}
    if unknown:
        raise bad_request(f"structured_outputs: unknown field(s) {sorted(unknown)}",
                          param="structured_outputs")
    out = []
    if so.get("json") is not None:
        out.append(json_schema_guide(so["json"], "structured_outputs.json"))
    if so.get("regex") is not None:
        out.append(Guide("regex", str(so["regex"])))
    if so.get("grammar") is not None:
        out.append(Guide("ebnf_grammar", str(so["grammar"])))
    if so.get("choice") is not None:
        out.append(choice_guide(so["choice"], "structured_outputs.choice"))
    if so.get("json_object"):
        out.append(json_schema_guide(OBJECT_SCHEMA, "structured_outputs.json_object"))
    tag = so.get("structural_tag")
    if tag is not None:
        out.append(Guide("structural_tag", tag if isinstance(tag, str) else json.dumps(tag)))
    return out


def request_guide(req: _SamplingRequest) -> Guide | None:
    """The request's guide; 400 when it asks for more than one."""
    found: list[tuple[str, Guide]] = []
    rf = _response_format(req)
    if rf is not None:
        found.append(("response_format", rf))
    if req.structured_outputs:
        found += [("structured_outputs", g) for g in _structured_outputs(req.structured_outputs)]
    if req.guided_json is not None:
        found.append(("guided_json", json_schema_guide(req.guided_json, "guided_json")))
    if req.guided_regex is not None:
        found.append(("guided_regex", Guide("regex", req.guided_regex)))
    if req.guided_grammar is not None:
        found.append(("guided_grammar", Guide("ebnf_grammar", req.guided_grammar)))
    if req.guided_choice is not None:
        found.append(("guided_choice", choice_guide(req.guided_choice, "guided_choice")))
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise bad_request(f"only one kind of structured output may be requested, got {names}",
                          param=found[1][0])
    return found[0][1] if found else None
