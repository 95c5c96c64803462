"""What the guided decoding tests share: the guides they sample (sized so that a tiny
random model ends them well within max_tokens), a validator per guide type, and
GuidedServer: one live llmserve (HTTP, gRPC) over the inflight_batcher_llm model set
filled for a tiny random checkpoint whose chat template is the demo model's
(Hermes-style tools), with room for 64 concurrent sequences, its executor in an engine
process."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from llm_fixtures import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "scripts"))

# The guides every test samples: sized so that a tiny random model ends them well
# within max_tokens (maxLength, maxItems, enum, bounded numbers and repeats).
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 5},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
    },
    "required": ["name", "age", "role", "tags", "code"],
    "additionalProperties": False,
}
REGEX = r"[a-z]{2,6}@[a-z]{2,5}\.(com|org|net)"
GRAMMAR = 'root ::= "(" num (op num){0,3} ")"\nop ::= "+" | "-" | "*"\nnum ::= [1-9] [0-9]{0,2}'
GRAMMAR_RE = r"\([1-9][0-9]{0,2}([+\-*][1-9][0-9]{0,2}){0,3}\)"
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
        "required": ["city"], "additionalProperties": False}
TAG = {"type": "structural_tag", "format": {
    "type": "tag", "begin": "<answer>", "content": {"type": "json_schema", "json_schema": CITY},
    "end": "</answer>"}}
TAG_RE = re.compile(r"<answer>(.*)</answer>", re.S)


def validate(kind: str, text: str) -> None:
    """Raises unless text is in the language of the guide of that kind."""
    import jsonschema

    if kind == "json":
        assert isinstance(json.loads(text), dict | list), text
    elif kind == "json_schema":
        jsonschema.validate(json.loads(text), PERSON)
    elif kind == "regex":
        assert re.fullmatch(REGEX, text), text
    elif kind == "ebnf_grammar":
        assert re.fullmatch(GRAMMAR_RE, text), text
    elif kind == "structural_tag":
        m = TAG_RE.fullmatch(text)
        assert m, text
        jsonschema.validate(json.loads(m.group(1)), CITY)
    else:
        raise AssertionError(kind)


# guide kind -> (guided_decoding_guide_type, guided_decoding_guide) for the model set
MODEL_SET_GUIDES = {
    "json": ("json", ""),
    "json_schema": ("json_schema", json.dumps(PERSON)),
    "regex": ("regex", REGEX),
    "ebnf_grammar": ("ebnf_grammar", GRAMMAR),
    "structural_tag": ("structural_tag", json.dumps(TAG)),
}


class GuidedServer:
    def __init__(self, base: Path):
        import fill_demo_repository as fill
        from demo_tokenizer import CHAT_TEMPLATE
        from e2e_live import LiveServer, e2e_options
        from transformers import AutoTokenizer

        self.ckpt = make_tiny_checkpoint(base / "ckpt", max_position_embeddings=1024)
        tok = AutoTokenizer.from_pretrained(str(self.ckpt))
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(str(self.ckpt))
        self.tokenizer = tok
        # the executor in an engine process, as make serve's demo repository runs it (the
        # in-process path: tests/llm_model_set/test_llm_set_e2e.py)
        repo = fill.fill_repository(base / "repo", self.ckpt, max_batch_size=64, instances=2,
                                    engine_process=True)
        self.live = LiveServer(e2e_options(model_repositories=[repo]))
        self.base_url = f"http://{self.live.http_url}/v1"
