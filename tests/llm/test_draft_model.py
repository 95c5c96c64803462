"""Draft-model speculation inside the executor: greedy output is the target's with any
draft, a draft equal to the target has every draft accepted, seeded sampling equals
plain sampling, and the draft cache frees its blocks when requests finish."""

from __future__ import annotations

import pytest
from executor_helpers import hf_reference, prompt, run, tokens_of
from llm_fixtures import make_tiny_checkpoint
from test_speculative import spec_counts, spec_request

from llmserve.core.errors import InvalidArgument
from llmserve.llm import SamplingConfig, SpeculativeDecodingConfig
from llmserve.llm.config import SpeculativeDecodingMode

NEW = 16


def draft_config(path, k=4):
    return SpeculativeDecodingConfig(mode=SpeculativeDecodingMode.DRAFT_MODEL,
                                     draft_model_path=str(path), num_draft_tokens=k)


@pytest.fixture(scope="module")
def other_draft(tmp_path_factory):
    """A random model with the target's vocabulary but other weights (seed 3)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("draft"), "llama", seed=3,
                                num_layers=1)


def test_self_draft_accepts_everything_and_matches_transformers(make_executor, exec_ckpt,
                                                                exec_hf):
    prompts = [prompt(7, 1), prompt(12, 2), prompt(3, 3)]
    refs = [hf_reference(exec_hf, p, NEW) for p in prompts]
    ex = make_executor(speculative_decoding_config=draft_config(exec_ckpt, k=3))
    outs = run(ex, [spec_request(p, NEW, streaming=i == 0) for i, p in enumerate(prompts)])
    assert [tokens_of(o) for o in outs] == refs
    for out in outs:
        drafted, accepted, _ = spec_counts(out)
        assert drafted > 0 and accepted == drafted
        assert out[-1].result.decoding_iter < NEW  # fewer steps than tokens


def test_other_draft_gives_the_targets_greedy_output(make_executor, exec_hf, other_draft):
    prompts = [prompt(n, 10 + n) for n in (4, 9, 15, 20)]
    refs = [hf_reference(exec_hf, p, NEW) for p in prompts]
    ex = make_executor(speculative_decoding_config=draft_config(other_draft))
    outs = run(ex, [spec_request(p, NEW) for p in prompts])
    assert [tokens_of(o) for o in outs] == refs
    assert sum(spec_counts(o)[0] for o in outs) > 0
    proposer = ex._stepper.proposer
    ex.shutdown()
    assert proposer.seqs == {}  # finished sequences gave their draft blocks back
    assert len(proposer.free) == proposer.runner.num_blocks


def test_sampled_with_seed_equals_plain_sampling(make_executor, other_draft):
    prompts = [prompt(6, 11), prompt(9, 12)]

    def sampled(p, seed):
        return spec_request(p, NEW, sampling_config=SamplingConfig(top_k=5, temperature=0.7,
                                                                   seed=seed))

    plain = make_executor()
    want = [tokens_of(o) for o in run(plain, [sampled(p, s) for s in (1, 2) for p in prompts])]
    plain.shutdown()
    ex = make_executor(speculative_decoding_config=draft_config(other_draft, k=2))
    assert [tokens_of(o) for o in run(ex, [sampled(p, s) for s in (1, 2) for p in prompts])] == want


def test_draft_model_config_errors(make_executor, tmp_path):
    with pytest.raises(InvalidArgument, match="draft_model_path"):
        SpeculativeDecodingConfig(mode=SpeculativeDecodingMode.DRAFT_MODEL).validate()
    wrong_vocab = make_tiny_checkpoint(tmp_path / "v", "llama", vocab_size=400)
    with pytest.raises(InvalidArgument, match="vocab size 400 differs"):
        make_executor(speculative_decoding_config=draft_config(wrong_vocab))
