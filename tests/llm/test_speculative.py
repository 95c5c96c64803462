"""Speculative decoding: n-gram lookup, rejection sampling keeps the target's
distribution (chi-square on a tiny vocab), and the executor's greedy output is identical
with and without drafts (external right/wrong/partial, with logits, n-gram lookup)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from executor_helpers import greedy_request, hf_reference, prompt, run, tokens_of

from llmserve.core.errors import InvalidArgument
from llmserve.llm import (
    ExternalDraftTokensConfig,
    OutputConfig,
    SamplingConfig,
    SpeculativeDecodingConfig,
)
from llmserve.llm.config import PromptLookupConfig, SpeculativeDecodingMode
from llmserve.llm.ngram import find_ngram_draft
from llmserve.llm.sampling import SamplingParams
from llmserve.llm.speculative import verify_drafts

# ------------------------------------------------------------------ n-gram lookup


def test_ngram_lookup_prefers_longest_ngram_and_full_continuation():
    assert find_ngram_draft([5, 6, 7, 8], 3) == []
    assert find_ngram_draft([1], 3) == []
    assert find_ngram_draft([1, 2, 1], 3) == [2, 1]
    # 2-gram (9, 1) occurs twice: the newest occurrence with 2 tokens after it wins
    assert find_ngram_draft([9, 1, 2, 9, 1, 3, 9, 1], 2, 1, 2) == [3, 9]
    # the 3-gram (4, 5, 6) beats the 1-gram (6), whose newest match is elsewhere
    assert find_ngram_draft([4, 5, 6, 7, 8, 6, 0, 4, 5, 6], 2, 1, 3) == [7, 8]
    # min size 2: a lone 1-gram match does not count
    assert find_ngram_draft([3, 9, 7, 3], 2, 2, 3) == []
    assert find_ngram_draft([3, 9, 7, 3], 2, 1, 3) == [9, 7]
    # a cycle: the draft continues the loop
    assert find_ngram_draft([1, 2, 3] * 3 + [1, 2], 4, 1, 3) == [3, 1, 2, 3]


# ------------------------------------------------------------------ rejection sampling

# chi-square critical values at p = 0.001 by degrees of freedom
CHI2_001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}


@dataclass
class Row:
    """A stand-in for a Sequence: what sampling and verification read."""

    token_ids: list[int] = field(default_factory=lambda: [0])
    prompt_len: int = 1
    generator: torch.Generator | None = None
    cur_top_p: float = 1.0


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = float(counts.sum())
    support = probs > 0
    assert counts[~support].sum() == 0, "a token outside the target's support was emitted"
    expected = probs[support] * n
    return float(((counts[support] - expected) ** 2 / expected).sum())


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    scaled = logits / params.temperature
    if params.top_k:
        kth = scaled.topk(params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return torch.softmax(scaled, -1)


def run_trials(target: torch.Tensor, draft: torch.Tensor, params: SamplingParams, n: int,
               threshold: float | None = None):
    """n verifications of drafts sampled from the processed draft logits; returns the
    emitted tokens of each trial and the drafts."""
    gen = torch.Generator().manual_seed(1234)
    draft_gen = torch.Generator().manual_seed(99)
    q = torch.stack([target_probs(d, params) for d in draft])
    emitted, drafts = [], []
    for _ in range(n):
        xs = [int(torch.multinomial(q[j], 1, generator=draft_gen)) for j in range(len(draft))]
        row = Row(generator=gen)
        out: list[int] = []

        def append(token, lp, raw, row=row, out=out):
            out.append(token)
            row.token_ids.append(token)
            return False

        verify_drafts(row, params, target, xs, append, draft_logits=draft, threshold=threshold)
        emitted.append(out)
        drafts.append(xs)
    return emitted, drafts


@pytest.mark.parametrize("top_k", [0, 3])
def test_rejection_sampling_keeps_target_distribution(top_k):
    vocab, n = 5, 10000
    target = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0], [0.0, 1.5, -0.5, 1.0, 2.0],
                           [1.0, 1.0, 1.0, 1.0, 1.0]])
    draft = torch.tensor([[-1.0, 0.5, 2.0, 1.0, 0.0], [2.0, 0.0, 0.0, -1.0, 1.0]])
    params = SamplingParams(greedy=False, temperature=0.8, top_k=top_k)
    emitted, drafts = run_trials(target, draft, params, n)
    for pos in range(2):
        p = target_probs(target[pos], params)
        tokens = torch.tensor([e[pos] for e in emitted if len(e) > pos])
        counts = torch.bincount(tokens, minlength=vocab).float()
        dof = int((p > 0).sum()) - 1
        assert chi2(counts, p) < CHI2_001[dof], (pos, counts / counts.sum(), p)
        # the test has power: the drafts' own distribution is rejected
        draft_counts = torch.bincount(torch.tensor([d[pos] for d in drafts]), minlength=vocab)
        assert chi2(draft_counts.float() * (p > 0), p) > 10 * CHI2_001[dof]
    # some drafts are accepted, some rejected, and all-accepted runs get a bonus token
    lengths = torch.bincount(torch.tensor([len(e) for e in emitted]))
    assert lengths[1] > 0 and lengths[2] > 0 and lengths[3] > 0


def test_acceptance_threshold_is_a_fixed_ratio_cut():
    target = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]))
    draft = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))
    params = SamplingParams(greedy=False)
    # p/q: token 0 -> 2.0, token 1 -> 0.6, token 2 -> 0.8
    for token, threshold, accepted in ((0, 1.0, True), (1, 0.7, False), (2, 0.7, True),
                                       (1, 0.6, True)):
        row = Row(generator=torch.Generator().manual_seed(0))
        out = []
        verify_drafts(row, params, target, [token], lambda t, lp, raw, out=out: out.append(t),
                      draft_logits=draft, threshold=threshold)
        assert (out[0] == token) == accepted and len(out) == (2 if accepted else 1)
        if not accepted:  # the replacement comes from max(0, p - q): token 0 only
            assert out == [0]


def test_greedy_with_draft_logits_is_token_match():
    target = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    draft = torch.tensor([[5.0, 0.0, 0.0]])  # the draft is sure of token 0
    for drafts, want in (([1], [1, 0]), ([0], [1])):
        out = []
        n = verify_drafts(Row(), SamplingParams(), target, drafts,
                          lambda t, lp, raw, out=out: out.append(t), draft_logits=draft,
                          threshold=0.1)
        assert out == want and n == len(want) - 1


# ------------------------------------------------------------------ executor

NEW = 12


@pytest.fixture(scope="module")
def cases(exec_hf):
    prompts = [prompt(n, 40 + n) for n in (7, 19)]
    return [(p, hf_reference(exec_hf, p, NEW)) for p in prompts]


def spec_request(p, max_tokens=NEW, drafts=None, logits=None, threshold=None, **kw):
    kw.setdefault("output_config", OutputConfig(exclude_input_from_output=True,
                                                return_perf_metrics=True))
    cfg = None if drafts is None else ExternalDraftTokensConfig(drafts, logits, threshold)
    return greedy_request(p, max_tokens, external_draft_tokens_config=cfg, **kw)


def spec_counts(responses):
    m = responses[-1].result.request_perf_metrics.speculative_decoding
    return m.total_draft_tokens, m.total_accepted_draft_tokens, m.acceptance_rate


def test_external_drafts_right_wrong_partial_give_identical_greedy_output(make_executor,
                                                                          cases):
    ex = make_executor()
    p, ref = cases[1]
    wrong = [(t + 1) % 300 for t in ref[:5]]
    logits = torch.randn(5, ex.vocab_size, generator=torch.Generator().manual_seed(3))
    variants = [  # (drafts, draft logits, accepted)
        (ref[:5], None, 5), (wrong, None, 0), (ref[:3] + wrong[3:], None, 3),
        (ref[:2] + wrong[2:], logits, 2), (ref[:5], logits, 5),
    ]
    outs = run(ex, [spec_request(p, drafts=d, logits=lg) for d, lg, _ in variants])
    for (_, _, accepted), out in zip(variants, outs, strict=True):
        assert tokens_of(out) == ref
        assert spec_counts(out) == (5, accepted, accepted / 5)


def test_accepted_run_respects_max_tokens_end_id_and_stop_words(make_executor, cases):
    ex = make_executor()
    p, ref = cases[0]
    drafts = ref[:6]
    out = run(ex, [spec_request(p, 3, drafts=drafts)])[0]
    assert tokens_of(out) == ref[:3]
    end = ref[4]
    first_end = ref.index(end)
    out = run(ex, [spec_request(p, drafts=drafts, end_id=end)])[0]
    assert tokens_of(out) == ref[:first_end]
    word = ref[1:3]
    out = run(ex, [spec_request(p, drafts=drafts, stop_words=[word])])[0]
    stop_at = next(i for i in range(2, NEW + 1) if ref[i - 2 : i] == word)
    assert tokens_of(out) == ref[:stop_at]


def test_log_probs_with_drafts_are_the_targets(make_executor, cases):
    ex = make_executor()
    p, ref = cases[1]
    oc = OutputConfig(exclude_input_from_output=True, return_log_probs=True)
    plain, spec = run(ex, [spec_request(p, output_config=oc),
                           spec_request(p, drafts=ref[:4] + [0, 0], output_config=oc)])
    assert tokens_of(spec) == tokens_of(plain) == ref
    assert torch.allclose(torch.tensor(spec[-1].result.log_probs[0]),
                          torch.tensor(plain[-1].result.log_probs[0]), atol=1e-4)


def test_bad_draft_logits_and_threshold_are_rejected(make_executor, cases):
    ex = make_executor()
    p, _ = cases[0]
    with pytest.raises(InvalidArgument, match="draft_logits must have shape"):
        ex.enqueue_request(spec_request(p, drafts=[5, 6], logits=torch.zeros(2, 7)))
    with pytest.raises(InvalidArgument, match="draft_acceptance_threshold"):
        ex.enqueue_request(spec_request(p, drafts=[5, 6], logits=torch.zeros(2, ex.vocab_size),
                                        threshold=1.5))


def lookup_config(k=4):
    return SpeculativeDecodingConfig(mode=SpeculativeDecodingMode.PROMPT_LOOKUP,
                                     prompt_lookup=PromptLookupConfig(k, 3, 1))


def test_prompt_lookup_greedy_identical_and_accepts(make_executor, exec_hf):
    # repetitive prompts: the tiny random model tends to copy, the lookup finds n-grams
    prompts = [prompt(6, 7) * 3, prompt(5, 8) * 2 + prompt(3, 9), prompt(11, 10)]
    refs = [hf_reference(exec_hf, p, 16) for p in prompts]
    ex = make_executor(speculative_decoding_config=lookup_config())
    outs = run(ex, [spec_request(p, 16, streaming=i == 0) for i, p in enumerate(prompts)])
    assert [tokens_of(o) for o in outs] == refs
    drafted = [spec_counts(o) for o in outs]
    assert sum(d[0] for d in drafted) > 0 and sum(d[1] for d in drafted) > 0
    for out, (_, accepted, _) in zip(outs, drafted, strict=True):
        # each accepted draft saves one step of its request
        assert out[-1].result.decoding_iter == 16 - accepted


def test_prompt_lookup_sampled_with_seed_equals_plain_sampling(make_executor):
    prompts = [prompt(6, 11) * 3, prompt(9, 12) * 2]

    def sampled(p, seed):
        sc = SamplingConfig(top_k=5, temperature=0.7, seed=seed)
        return spec_request(p, 16, sampling_config=sc)

    plain = make_executor()
    want = [tokens_of(o) for o in run(plain, [sampled(p, s) for s in (1, 2) for p in prompts])]
    plain.shutdown()
    ex = make_executor(speculative_decoding_config=lookup_config(3))
    outs = run(ex, [sampled(p, s) for s in (1, 2) for p in prompts])
    assert [tokens_of(o) for o in outs] == want
    assert sum(spec_counts(o)[1] for o in outs) > 0


def test_sampled_request_with_draft_logits_runs(make_executor, cases):
    ex = make_executor()
    p, ref = cases[0]
    logits = torch.zeros(4, ex.vocab_size)
    logits[torch.arange(4), torch.tensor(ref[:4])] = 5.0
    sc = SamplingConfig(top_k=3, temperature=0.5, seed=5)
    outs = run(ex, [spec_request(p, drafts=ref[:4], logits=logits, sampling_config=sc,
                                 threshold=t) for t in (None, 0.5)])
    for out in outs:
        assert len(tokens_of(out)) == NEW
        total, accepted, _ = spec_counts(out)
        assert total == 4 and 0 <= accepted <= 4
