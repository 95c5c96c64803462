"""Guided decoding in the executor: TensorRT-LLM's names, guides checked on enqueue and
compiled once off the engine thread, JSON rules for weak models (compact whitespace, no
control characters or surrogates in strings), outputs that parse with streaming, stop
words, num_return_sequences, speculative decoding and a tight max_tokens, unguided
neighbours untouched, cancellation while compiling, and life without xgrammar."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading

import jsonschema
import pytest
from executor_helpers import collect, prompt, run, tokens_of
from llm_fixtures import EOS_ID, build_tokenizer

from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.llm import (
    FinishReason,
    GuidedDecodingConfig,
    GuidedDecodingParams,
    OutputConfig,
    Request,
    SamplingConfig,
    SpeculativeDecodingConfig,
)
from llmserve.llm.config import PromptLookupConfig, SpeculativeDecodingMode
from llmserve.llm.guided import GuideCompiler

GT = GuidedDecodingParams.GuideType
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                         "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["city", "n"], "additionalProperties": False}
TOK = build_tokenizer()


def guided(tokens, max_tokens, guide_type, guide=None, *, seed=None, **kw) -> Request:
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, seed=seed) if seed is not None \
        else SamplingConfig()
    kw.setdefault("sampling_config", sampling)
    return Request(list(tokens), max_tokens, end_id=EOS_ID,
                   output_config=OutputConfig(exclude_input_from_output=True),
                   guided_decoding_params=GuidedDecodingParams(guide_type, guide), **kw)


def text_of(responses, index: int = 0) -> str:
    return TOK.decode(tokens_of(responses, index))


def test_names_mirror_tensorrt_llm():
    assert GuidedDecodingParams(GT.JSON_SCHEMA, "{}").guide_type.value == "json_schema"
    assert [t.value for t in GT] == ["json", "json_schema", "regex", "ebnf_grammar",
                                     "structural_tag"]
    assert GuidedDecodingParams("REGEX", "a").guide_type is GT.REGEX
    assert GuidedDecodingConfig(GuidedDecodingConfig.GuidedDecodingBackend.XGRAMMAR)
    with pytest.raises(InvalidArgument, match="unknown guide type"):
        GuidedDecodingParams("yaml", "x")


@pytest.fixture(scope="module")
def compiler(exec_ckpt):
    return GuideCompiler(None, exec_ckpt, 320)


def _accepts(compiler, params, text: str | bytes) -> bool:
    m = compiler.matcher(compiler.prepare(params).result(), EOS_ID, 100).matcher
    data = text.encode() if isinstance(text, str) else text
    return all(m.accept_token(TOK.convert_tokens_to_ids(b)) for b in _byte_tokens(data))


def _byte_tokens(data: bytes) -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    table = {b: c for b, c in zip(sorted(range(256)), _bytes_to_unicode(), strict=True)}
    assert set(table.values()) <= set(alphabet)
    return [table[b] for b in data]


def _bytes_to_unicode() -> list[str]:
    # GPT-2's byte -> printable character table (what byte-level BPE tokens spell)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


def test_json_strings_refuse_control_characters_and_surrogates(compiler):
    sized = GuidedDecodingParams(GT.JSON_SCHEMA, json.dumps(CITY))
    assert _accepts(compiler, sized, '{"city": "Ba')
    assert not _accepts(compiler, sized, '{"city": "B\x01')
    assert not _accepts(compiler, sized, b'{"city": "\xed\xb5\xa8')  # U+DD68, a surrogate
    assert _accepts(compiler, sized, '{"city": "\u00e9')
    free = GuidedDecodingParams(GT.JSON)
    assert not _accepts(compiler, free, '["\x1f')


def test_json_whitespace_is_compact_unless_configured(exec_ckpt, compiler):
    params = GuidedDecodingParams(GT.JSON)
    assert not _accepts(compiler, params, "{\n")
    assert _accepts(compiler, params, '{"a": [1, 2]')
    loose = GuideCompiler(GuidedDecodingConfig(json_any_whitespace=True), exec_ckpt, 320)
    assert _accepts(loose, params, '{\n  "a"')


def test_bad_guides_fail_enqueue(make_executor):
    ex = make_executor(max_beam_width=2)
    for params, words in ((GuidedDecodingParams(GT.REGEX, "a(b"), "parenthesis"),
                          (GuidedDecodingParams(GT.JSON_SCHEMA, "{"), "not valid JSON"),
                          (GuidedDecodingParams(GT.EBNF_GRAMMAR, None), "needs a guide"),
                          (GuidedDecodingParams(GT.STRUCTURAL_TAG, '{"x": 1}'), "format")):
        with pytest.raises(InvalidArgument, match=words):
            ex.enqueue_request(Request([5, 6], 4, guided_decoding_params=params))
    with pytest.raises(InvalidArgument, match="beam search"):
        ex.enqueue_request(guided([5, 6], 4, GT.JSON, sampling_config=SamplingConfig(beam_width=2)))


def test_every_sampled_output_parses_in_a_tight_budget(make_executor):
    """The shortest {"city": "", "n": 0} takes 18 tokens of this tokenizer: with 22 the
    model writes what it likes until the closing path needs the rest."""
    ex = make_executor()
    schema = json.dumps(CITY)
    texts = [text_of(r) for r in run(ex, [guided(prompt(6, i), 22, GT.JSON_SCHEMA, schema, seed=i)
                                           for i in range(50)])]
    for text in texts:
        jsonschema.validate(json.loads(text), CITY)
    assert len({t for t in texts}) > 10  # sampled, not forced to one output


def test_streaming_num_return_sequences_and_stop_words(make_executor):
    ex = make_executor()
    regex = r"[a-c]{2,5}(-[0-9]{1,3}){1,3}"
    got = run(ex, [guided(prompt(5, 1), 24, GT.REGEX, regex, seed=4, streaming=True,
                          sampling_config=SamplingConfig(temperature=1.0, top_p=1.0, seed=4,
                                                         num_return_sequences=4))])[0]
    texts = [text_of(got, i) for i in range(4)]
    assert len(set(texts)) > 1 and all(re.fullmatch(regex, t) for t in texts), texts
    assert sum(1 for r in got if r.result.is_final) == 1
    # a stop word ends a guided output where it appears (here the first dash)
    dash = TOK.convert_tokens_to_ids("-")
    r = run(ex, [guided(prompt(5, 1), 24, GT.REGEX, regex, seed=4, stop_words=[[dash]])])[0]
    assert text_of(r).endswith("-") and r[-1].result.finish_reasons == [FinishReason.STOP_WORDS]


def test_unguided_neighbours_keep_their_greedy_output(make_executor):
    ex = make_executor()
    plain = [Request(prompt(7, 10 + i), 12, output_config=OutputConfig(
        exclude_input_from_output=True)) for i in range(4)]
    alone = [tokens_of(run(ex, [r])[0]) for r in plain]
    mixed = run(ex, plain + [guided(prompt(4, i), 30, GT.JSON, seed=i) for i in range(6)])
    assert [tokens_of(m) for m in mixed[:4]] == alone
    for m in mixed[4:]:
        json.loads(text_of(m))


@pytest.mark.parametrize("mode", ["prompt_lookup", "draft_model"])
def test_speculative_drafts_are_verified_against_the_guide(make_executor, exec_ckpt, mode):
    """Greedy guided outputs are the same with drafts (prompt lookup, or the checkpoint
    drafting for itself) as without: a draft the guide forbids is rejected."""
    if mode == "prompt_lookup":
        spec = SpeculativeDecodingConfig(mode=SpeculativeDecodingMode.PROMPT_LOOKUP,
                                         prompt_lookup=PromptLookupConfig(max_draft_tokens=3))
    else:
        spec = SpeculativeDecodingConfig(mode=SpeculativeDecodingMode.DRAFT_MODEL,
                                         draft_model_path=str(exec_ckpt), num_draft_tokens=3)
    schema = json.dumps(CITY)
    # prompts that repeat JSON-ish text so that n-gram drafts exist
    prompts = [TOK.encode('{"city": "ab", "n": 1} {"city": "') + prompt(3, i) for i in range(4)]
    reqs = [guided(p, 24, GT.JSON_SCHEMA, schema) for p in prompts]
    plain = [tokens_of(r) for r in run(make_executor(), reqs)]
    spec_ex = make_executor(speculative_decoding_config=spec)
    drafted = [tokens_of(r) for r in run(spec_ex, [guided(p, 24, GT.JSON_SCHEMA, schema)
                                                   for p in prompts])]
    assert drafted == plain
    for tokens in drafted:
        jsonschema.validate(json.loads(TOK.decode(tokens)), CITY)


def test_compiled_once_off_the_engine_thread(make_executor, monkeypatch):
    ex = make_executor()
    threads = []
    real = GuideCompiler._compile

    def spy(self, grammar):
        threads.append(threading.current_thread().name)
        return real(self, grammar)

    monkeypatch.setattr(GuideCompiler, "_compile", spy)
    regex = r"x[0-9]{3}y"
    got = run(ex, [guided(prompt(4, i), 8, GT.REGEX, regex, seed=i) for i in range(6)])
    assert all(re.fullmatch(regex, text_of(r)) for r in got)
    assert len(threads) == 1 and threads[0].startswith("guides")


def test_cancel_while_compiling(make_executor, monkeypatch):
    ex = make_executor()
    gate = threading.Event()
    real = GuideCompiler._compile
    monkeypatch.setattr(GuideCompiler, "_compile",
                        lambda self, grammar: (gate.wait(10), real(self, grammar))[1])
    rid = ex.enqueue_request(guided([5, 6, 7], 8, GT.REGEX, "slow[0-9]+"))
    other = ex.enqueue_request(Request([5, 6], 3))  # not stuck behind the compile
    assert tokens_of(collect(ex, [other])[other]) and not gate.is_set()
    ex.cancel_request(rid)
    gate.set()
    final = collect(ex, [rid])[rid][-1]
    assert final.result.finish_reasons == [FinishReason.CANCELLED]
    assert ex._num_queued == 0 and not ex._compiling


def test_without_xgrammar_only_guided_requests_fail(make_executor, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "xgrammar", None)
    with caplog.at_level(logging.WARNING):
        ex = make_executor(guided_decoding_config=GuidedDecodingConfig())
    assert "guided decoding is unavailable" in caplog.text
    assert tokens_of(run(ex, [Request([5, 6], 3)])[0])
    with pytest.raises(Unsupported, match="pip install xgrammar"):
        ex.enqueue_request(guided([5, 6], 4, GT.JSON))
