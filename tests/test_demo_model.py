"""The bundled demo checkpoints (models/demo-llm, models/demo-draft) load offline with
transformers, write English, carry a working chat template and share one vocabulary;
plus the corpus decoder of scripts/demo_corpus.py on hand-built R serializations."""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "models" / "demo-llm"
DRAFT = ROOT / "models" / "demo-draft"
REQUIRED_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "README.md",
)
WORD = re.compile(r"[A-Za-z]+(?:['\-][A-Za-z]+)*'?")
PUNCT = "\"'()[],.;:!?-"


@pytest.fixture(scope="module")
def main_tok():
    return AutoTokenizer.from_pretrained(MAIN)


@pytest.fixture(scope="module")
def main_model():
    return AutoModelForCausalLM.from_pretrained(MAIN).eval()


@pytest.mark.parametrize("folder", [MAIN, DRAFT], ids=["demo-llm", "demo-draft"])
def test_checkpoint_files_and_size(folder: Path) -> None:
    for name in REQUIRED_FILES:
        assert (folder / name).is_file(), f"{folder.name}/{name} missing"
    assert (folder / "model.safetensors").stat().st_size < 40 * 1024 * 1024
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in tok_cfg["chat_template"]
    gen = json.loads((folder / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (
        config["bos_token_id"], config["eos_token_id"], config["pad_token_id"])


def test_greedy_generation_is_english(main_tok, main_model) -> None:
    ids = main_tok("It was a fine morning, and", return_tensors="pt").input_ids
    assert ids[0, 0].item() == main_tok.bos_token_id
    with torch.no_grad():
        out = main_model.generate(ids, do_sample=False, max_new_tokens=40,
                                  pad_token_id=main_tok.pad_token_id)
    text = main_tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    words = text.split()
    assert len(words) >= 5, text
    assert sum(bool(WORD.fullmatch(w.strip(PUNCT))) for w in words) / len(words) >= 0.8, text
    assert text.isascii(), text


def test_decode_round_trips_spacing(main_tok) -> None:
    text = 'Mr.  Darcy said,\n\n"I am  quite sure of it" -- and walked on.\t(1813)'
    ids = main_tok(text, add_special_tokens=False).input_ids
    assert main_tok.decode(ids) == text


def test_chat_template(main_tok, main_model) -> None:
    messages = [
        {"role": "system", "content": "Answer politely."},
        {"role": "user", "content": "How do you do?"},
        {"role": "assistant", "content": "Very well, I thank you."},
        {"role": "user", "content": "Will you walk with me?"},
    ]
    rendered = main_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|bos|><|system|>\nAnswer politely.<|eos|>\n<|user|>\nHow do you do?<|eos|>\n"
        "<|assistant|>\nVery well, I thank you.<|eos|>\n<|user|>\nWill you walk with me?"
        "<|eos|>\n<|assistant|>\n"
    )
    no_prompt = main_tok.apply_chat_template(messages[:2], tokenize=False)
    assert no_prompt.endswith("How do you do?<|eos|>\n")
    ids = main_tok(rendered, add_special_tokens=False).input_ids
    assert ids.count(main_tok.eos_token_id) == 4
    assert ids[0] == main_tok.bos_token_id
    with pytest.raises(Exception, match="Unknown role"):
        main_tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)
    prompt = torch.tensor([ids])
    with torch.no_grad():
        out = main_model.generate(prompt, do_sample=False, max_new_tokens=40,
                                  pad_token_id=main_tok.pad_token_id)
    reply = main_tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
    assert reply.strip(), "empty chat reply"


def test_chat_template_tools(main_tok) -> None:
    """Tools, an assistant tool call with null content and a tool result render in the
    Hermes style that the OpenAI API parses (llmserve/frontends/openai/tools.py)."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    conversation = [
        {"role": "user", "content": "Weather in Bath?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Bath"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Rain"},
    ]
    rendered = main_tok.apply_chat_template(conversation, tools=tools, tokenize=False,
                                            add_generation_prompt=True)
    assert '<tools>\n{"name": "get_weather"' in rendered
    assert ('<|assistant|>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bath"}}'
            '\n</tool_call><|eos|>\n<|user|>\n<tool_response>\nRain\n</tool_response><|eos|>\n'
            '<|assistant|>\n') in rendered


def test_draft_shares_vocabulary(main_tok, main_model) -> None:
    draft_tok = AutoTokenizer.from_pretrained(DRAFT)
    assert draft_tok.get_vocab() == main_tok.get_vocab()
    assert (DRAFT / "tokenizer.json").read_bytes() == (MAIN / "tokenizer.json").read_bytes()
    draft = AutoModelForCausalLM.from_pretrained(DRAFT).eval()
    assert draft.config.vocab_size == main_model.config.vocab_size
    assert draft.num_parameters() * 3 < main_model.num_parameters()
    ids = draft_tok("Elizabeth could not help", return_tensors="pt").input_ids
    with torch.no_grad():
        out = draft.generate(ids, do_sample=False, max_new_tokens=20,
                             pad_token_id=draft_tok.pad_token_id)
    assert draft_tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def _xdr_header() -> bytes:
    enc = b"UTF-8"
    return b"X\n" + struct.pack(">iiii", 3, 0x040201, 0x030500, len(enc)) + enc


def _xdr_strings(items: list[str | None]) -> bytes:
    body = struct.pack(">ii", 16, len(items))
    for item in items:
        if item is None:
            body += struct.pack(">ii", 9, -1)
        else:
            raw = item.encode()
            body += struct.pack(">ii", 0x8009, len(raw)) + raw
    return _xdr_header() + body


def test_corpus_decoder_reads_r_character_vectors(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import demo_corpus
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    payload = _xdr_strings(["EMMA", "", None, "Emma Woodhouse, handsome \u2019clever\u2019"])
    assert demo_corpus.unserialize_character_vector(payload) == [
        "EMMA", "", "", "Emma Woodhouse, handsome \u2019clever\u2019"]
    ints = _xdr_header() + struct.pack(">iii", 13, 1, 7)
    assert demo_corpus.unserialize_character_vector(ints) is None

    import zlib
    records = [_xdr_strings(["a", "b"]), ints, _xdr_strings(["c"])]
    rdb = tmp_path / "Rdata.rdb"
    rdb.write_bytes(b"".join(struct.pack(">i", len(r)) + zlib.compress(r) for r in records))
    assert demo_corpus.read_rdb_string_vectors(rdb) == [["a", "b"], ["c"]]

    book = demo_corpus.Book("EMMA", ["EMMA", "", "CHAPTER I", "", "Emma _was_", "happy.", "",
                                     '"Poor Miss Taylor!"', "", '"I cannot agree."', ""])
    paras = demo_corpus.paragraphs(book)
    assert paras == ["Emma was happy.", '"Poor Miss Taylor!"', '"I cannot agree."']
    assert demo_corpus.dialogue_pairs(paras) == [("Poor Miss Taylor!", "I cannot agree.")]
