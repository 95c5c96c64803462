"""A guide (GuidedDecodingParams) as an xgrammar Grammar, checked before anything runs.

JSON guides follow llmserve's rules for weak models: compact whitespace unless the
config allows any (a grammar with free whitespace lets a small model emit newlines until
max_tokens), and string characters are never raw control characters (xgrammar's
maxLength/minLength string rule admits them; json.loads refuses them), nor UTF-16
surrogates.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmserve.core.errors import InvalidArgument
from llmserve.llm.request import GuidedDecodingParams, GuideType

# TensorRT-LLM's JSON guide is xgrammar's builtin JSON grammar: an object or an array.
ANY_JSON_SCHEMA = {"type": ["object", "array"]}

# Text of xgrammar's EBNF that the JSON fixes rewrite.
_FREE_WHITESPACE = r"[ \n\r\t]*"
_COMPACT_WHITESPACE = r"[ ]?"  # a single optional space where JSON allows whitespace
# String characters as xgrammar writes them: sized strings (maxLength, minLength) admit
# control characters, and every string admits UTF-16 surrogates, which are not UTF-8
# (each decodes to U+FFFD, breaking maxLength)
_STRING_CHARS = (r"[^\"\\\r\n]", r"[^\0-\x1f\"\\\r\n]")
_SAFE_STRING_CHAR = r"[^\0-\x1f\"\\\uD800-\uDFFF]"
# xgrammar's C++ errors start with "[time] /path/file.cc:line: "
_CPP_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


def _clean(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _CPP_PREFIX.sub("", text)


def _needs_guide(params: GuidedDecodingParams) -> str:
    if params.guide is None or not str(params.guide).strip():
        raise InvalidArgument(f"guide type {params.guide_type.value} needs a guide "
                              "(guided_decoding_guide)")
    return str(params.guide)


def _json_document(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"the {what} guide is not valid JSON: {exc}") from None


def _structural_tag(xgr: Any, guide: str) -> Any:
    """TensorRT-LLM's and vLLM's legacy form {"structures": [{"begin", "schema", "end"}],
    "triggers": [...]} or xgrammar's {"type": "structural_tag", "format": {...}}."""
    doc = _json_document(guide, "structural_tag")
    if isinstance(doc, dict) and "structures" in doc and "format" not in doc:
        items = []
        for s in doc.get("structures") or []:
            if not isinstance(s, dict) or not {"begin", "end"} <= set(s):
                raise InvalidArgument("structural_tag structures need begin, schema and end")
            schema = s.get("schema", s.get("parameters", {}))
            items.append(xgr.StructuralTagItem(begin=s["begin"], schema=schema, end=s["end"]))
        triggers = doc.get("triggers") or [i.begin for i in items]
        tag = xgr.StructuralTag.from_legacy_structural_tag(items, list(triggers))
        return xgr.Grammar.from_structural_tag(tag.model_dump_json())
    return xgr.Grammar.from_structural_tag(guide)


def parse_guide(xgr: Any, params: GuidedDecodingParams, *, any_whitespace: bool) -> Any:
    """The xgrammar Grammar of a guide; InvalidArgument naming the problem when the guide
    is malformed (bad JSON, schema, regex or grammar)."""
    kind = params.guide_type
    try:
        if kind is GuideType.JSON:
            grammar = xgr.Grammar.from_json_schema(json.dumps(ANY_JSON_SCHEMA),
                                                   any_whitespace=any_whitespace)
        elif kind is GuideType.JSON_SCHEMA:
            text = _needs_guide(params)
            _json_document(text, "json_schema")
            grammar = xgr.Grammar.from_json_schema(text, any_whitespace=any_whitespace)
        elif kind is GuideType.REGEX:
            grammar = xgr.Grammar.from_regex(_needs_guide(params))
        elif kind is GuideType.EBNF_GRAMMAR:
            grammar = xgr.Grammar.from_ebnf(_needs_guide(params))
        elif kind is GuideType.STRUCTURAL_TAG:
            grammar = _structural_tag(xgr, _needs_guide(params))
        else:  # pragma: no cover - GuideType is closed
            raise InvalidArgument(f"unknown guide type {kind}")
    except InvalidArgument:
        raise
    except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError/its own
        raise InvalidArgument(f"invalid {kind.value} guide: {_clean(exc)}") from None
    if kind in (GuideType.JSON, GuideType.JSON_SCHEMA, GuideType.STRUCTURAL_TAG):
        grammar = _json_fixes(xgr, grammar, compact=not any_whitespace)
    return grammar


def _json_fixes(xgr: Any, grammar: Any, *, compact: bool) -> Any:
    """Rewrite xgrammar's JSON rules: no control characters in sized strings, no
    surrogates in any; compact whitespace inside structural tags (their JSON content
    always allows any)."""
    text = str(grammar)
    fixed = text
    for chars in _STRING_CHARS:
        fixed = fixed.replace(chars, _SAFE_STRING_CHAR)
    if compact:
        fixed = fixed.replace(_FREE_WHITESPACE, _COMPACT_WHITESPACE)
    return grammar if fixed == text else xgr.Grammar.from_ebnf(fixed)


def guide_key(params: GuidedDecodingParams, any_whitespace: bool) -> tuple[str, str, bool]:
    """Cache key of a guide's compiled grammar."""
    return params.guide_type.value, params.guide or "", any_whitespace
