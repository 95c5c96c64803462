"""Sampling: each logits feature, seeded reproducibility independent of neighbours."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from llmserve.llm.request import SamplingConfig
from llmserve.llm.sampling import SamplingParams, make_generator, next_top_p, sample

V = 16


@dataclass
class Row:
    token_ids: list[int]
    prompt_len: int
    generator: torch.Generator | None = None
    cur_top_p: float = 1.0


def params(**kw) -> SamplingParams:
    extra = {k: kw.pop(k) for k in ("end_id", "bad_words", "embedding_bias",
                                    "return_log_probs", "log_probs_over_kept") if k in kw}
    return SamplingParams.from_config(SamplingConfig(**kw), **extra)


def one(logits, p: SamplingParams, row: Row | None = None):
    row = row or Row([0], 1, make_generator(p.seed), p.top_p)
    return sample(logits.clone().unsqueeze(0), [row], [p])


def test_greedy_rules_follow_tensorrt_llm():
    assert params().greedy
    assert params(temperature=0.7).greedy  # no top_k / top_p: greedy
    assert params(top_k=1, top_p=0.9).greedy
    assert params(temperature=0.0, top_k=5).greedy
    assert not params(top_k=5).greedy and not params(top_p=0.5).greedy


def test_greedy_picks_argmax_and_returns_log_prob():
    logits = torch.randn(V)
    out = one(logits, params(return_log_probs=True))
    assert out.tokens == [int(logits.argmax())]
    expected = torch.log_softmax(logits, -1)[out.tokens[0]].item()
    assert out.log_probs[0] == pytest.approx(expected, abs=1e-6)


def test_normalized_log_probs_are_over_the_kept_set_as_in_tensorrt_llm():
    """normalize_log_probs: log P(token | top-k set) for sampled rows, 0.0 for greedy ones
    (the top-1 set); without it, log P(token | vocabulary)."""
    logits = torch.randn(V)
    greedy = one(logits, params(return_log_probs=True, log_probs_over_kept=True))
    assert greedy.log_probs == [0.0]
    p = params(top_k=3, seed=4, temperature=0.5, return_log_probs=True, log_probs_over_kept=True)
    out = one(logits, p)
    top3 = torch.topk(logits / 0.5, 3)
    kept = dict(zip(top3.indices.tolist(), torch.log_softmax(top3.values, -1).tolist(),
                    strict=True))
    assert out.log_probs[0] == pytest.approx(kept[out.tokens[0]], abs=1e-5)
    p.log_probs_over_kept = False
    out = one(logits, p)
    full = torch.log_softmax(logits / 0.5, -1)[out.tokens[0]].item()
    assert out.log_probs[0] == pytest.approx(full, abs=1e-5)


def test_top_k_samples_only_within_top_k():
    logits = torch.linspace(0, 1, V)  # nearly flat: all tokens plausible
    p = params(top_k=3, temperature=1.0, seed=1)
    row = Row([0], 1, make_generator(1))
    seen = {sample(logits.clone().unsqueeze(0), [row], [p]).tokens[0] for _ in range(200)}
    assert seen == {V - 1, V - 2, V - 3}


def test_top_p_keeps_smallest_set_reaching_mass():
    logits = torch.full((V,), -10.0)
    logits[4], logits[5], logits[6] = 3.0, 2.5, 0.0
    p = params(top_p=0.8, seed=2)
    row = Row([0], 1, make_generator(2), 0.8)
    seen = {sample(logits.clone().unsqueeze(0), [row], [p]).tokens[0] for _ in range(200)}
    assert seen == {4, 5}


def test_top_p_decay_min_and_reset():
    p = params(top_p=0.8, top_p_decay=0.5, top_p_min=0.3, top_p_reset_ids=9)
    assert next_top_p(p, 0.8, 1) == pytest.approx(0.4)
    assert next_top_p(p, 0.4, 1) == pytest.approx(0.3)  # floored at top_p_min
    assert next_top_p(p, 0.3, 9) == pytest.approx(0.8)  # reset id restores top_p


def test_temperature_sharpens_distribution():
    logits = torch.tensor([1.0, 0.0] + [-30.0] * (V - 2))
    cold = params(top_k=2, temperature=0.05, seed=3)
    row = Row([0], 1, make_generator(3))
    picks = [sample(logits.clone().unsqueeze(0), [row], [cold]).tokens[0] for _ in range(100)]
    assert picks.count(0) == 100
    hot = params(top_k=2, temperature=5.0, seed=3)
    row = Row([0], 1, make_generator(3))
    picks = [sample(logits.clone().unsqueeze(0), [row], [hot]).tokens[0] for _ in range(200)]
    assert 40 < picks.count(1) < 160


def test_repetition_presence_frequency_penalties():
    logits = torch.zeros(V)
    logits[3], logits[4] = 2.0, 1.9
    # token 3 in the prompt: repetition penalty divides its positive logit
    row = Row([3, 1], 2)
    assert one(logits, params(repetition_penalty=2.0), row).tokens == [4]
    assert one(logits, params(), row).tokens == [3]
    # presence / frequency look at generated tokens only
    gen = Row([1, 3, 3], 1)
    assert one(logits, params(presence_penalty=0.5), gen).tokens == [4]
    assert one(logits, params(presence_penalty=0.5), Row([3, 1], 2)).tokens == [3]
    assert one(logits, params(frequency_penalty=0.07), gen).tokens == [4]  # 2 x 0.07
    assert one(logits, params(frequency_penalty=0.07), Row([1, 3], 1)).tokens == [3]


def test_min_tokens_suppresses_end_id():
    logits = torch.zeros(V)
    logits[2] = 5.0
    p = params(min_tokens=2, end_id=2)
    assert one(logits, p, Row([1, 7], 1)).tokens != [2]  # 1 generated < 2
    assert one(logits, p, Row([1, 7, 8], 1)).tokens == [2]


def test_bad_words_single_and_multi_token():
    logits = torch.zeros(V)
    logits[5], logits[6] = 3.0, 2.0
    assert one(logits, params(bad_words=[[5]]), Row([1], 1)).tokens == [6]
    multi = params(bad_words=[[9, 5]])
    assert one(logits, multi, Row([1, 9], 1)).tokens == [6]  # 9 then 5 is banned
    assert one(logits, multi, Row([1, 8], 1)).tokens == [5]


def test_no_repeat_ngram():
    logits = torch.zeros(V)
    logits[4] = 3.0
    p = params(no_repeat_ngram_size=2)
    assert one(logits, p, Row([7, 4, 7], 3)).tokens != [4]  # "7 4" already seen
    assert one(logits, p, Row([7, 4, 8], 3)).tokens == [4]


def test_embedding_bias_added_to_logits():
    logits = torch.zeros(V)
    logits[1] = 1.0
    bias = torch.zeros(V)
    bias[8] = 2.0
    assert one(logits, params(embedding_bias=bias)).tokens == [8]


def test_seeded_samples_do_not_depend_on_batch_neighbours():
    torch.manual_seed(0)
    steps = [torch.randn(V) for _ in range(20)]
    p = params(top_k=0, top_p=1.0, temperature=1.0, seed=1234)

    def run(neighbours: int) -> list[int]:
        rows = [Row([0], 1, make_generator(1234))]
        ps = [p]
        for n in range(neighbours):
            rows.append(Row([0], 1, make_generator(n)))
            ps.append(params(top_k=4, seed=n))
        out = []
        for logits in steps:
            batch = torch.stack([logits] + [torch.randn(V) for _ in range(neighbours)])
            out.append(sample(batch, rows, ps).tokens[0])
        return out

    alone = run(0)
    assert run(3) == alone and run(1) == alone
    other = [sample(s.clone().unsqueeze(0), [Row([0], 1, make_generator(99))], [p]).tokens[0]
             for s in steps]
    assert other != alone


def test_sibling_sequences_get_distinct_streams():
    a = torch.empty(8).exponential_(generator=make_generator(5, 0))
    b = torch.empty(8).exponential_(generator=make_generator(5, 1))
    a2 = torch.empty(8).exponential_(generator=make_generator(5, 0))
    assert torch.equal(a, a2) and not torch.equal(a, b)


def test_sampled_frequencies_follow_the_probabilities_in_a_batch():
    """Inverse-CDF sampling: over many draws each row's frequencies match its softmax
    (within 4 standard deviations), rows of one batch use their own distributions, and
    tokens of probability 0 (outside top_k) never come up."""
    torch.manual_seed(0)
    rows_logits = [torch.tensor([2.0, 1.0, 0.0, -1.0] + [-5.0] * (V - 4)),
                   torch.tensor([0.0] * V)]
    ps = [params(top_k=V, temperature=1.0, seed=11), params(top_k=4, temperature=1.0, seed=12)]
    rows = [Row([0], 1, make_generator(11)), Row([0], 1, make_generator(12))]
    n = 4000
    counts = torch.zeros(2, V)
    for _ in range(n):
        out = sample(torch.stack(rows_logits), rows, ps).tokens
        for r, tok in enumerate(out):
            counts[r, tok] += 1
    expected = [torch.softmax(rows_logits[0], -1), torch.zeros(V)]
    # row 1: top_k=4 over equal logits keeps 4 tokens (ties: the first four), 1/4 each
    kept = counts[1].nonzero().flatten().tolist()
    assert len(kept) == 4
    for tok in kept:
        expected[1][tok] = 0.25
    for r in range(2):
        p = expected[r]
        sd = torch.sqrt(n * p * (1 - p))
        assert torch.all((counts[r] - n * p).abs() <= 4 * sd + 1e-6), (r, counts[r], n * p)
