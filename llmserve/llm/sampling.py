"""Token sampling, vectorised across the batch, with per-request generators.

Logits processing order (as TensorRT-LLM): embedding bias, repetition / presence /
frequency penalties, min_tokens (end ids banned), bad words and no-repeat n-grams, the
guide's token mask (guided sequences only), temperature, top-k, top-p. Each sequence
samples with its own torch.Generator, drawing exactly one noise vector per sampled
token, so its samples depend on its seed only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Protocol

import torch

from llmserve.llm.guided.matcher import apply_guides, check_guided, guided_rows
from llmserve.llm.request import SamplingConfig


@dataclass(slots=True)
class SamplingParams:
    """A SamplingConfig resolved to plain values (neutral values mean 'off')."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    top_p_min: float = 0.0
    top_p_decay: float = 1.0  # 1.0: no decay
    top_p_reset_ids: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    no_repeat_ngram_size: int = 0
    end_ids: list[int] = field(default_factory=list)
    bad_words: list[list[int]] = field(default_factory=list)
    embedding_bias: torch.Tensor | None = None
    seed: int | None = None
    return_log_probs: bool = False
    # log probs over the kept top-k/top-p set (TensorRT-LLM's normalize_log_probs) rather
    # than over the vocabulary
    log_probs_over_kept: bool = False

    @classmethod
    def from_config(cls, cfg: SamplingConfig, *, end_id: int | None = None,
                    bad_words: list[list[int]] | None = None,
                    embedding_bias: torch.Tensor | None = None,
                    return_log_probs: bool = False,
                    log_probs_over_kept: bool = False) -> SamplingParams:
        top_k = cfg.top_k or 0
        top_p = cfg.top_p if cfg.top_p is not None else 0.0
        temperature = cfg.temperature if cfg.temperature is not None else 1.0
        # TensorRT-LLM: sampling needs top_k > 1 or top_p > 0; otherwise greedy.
        greedy = top_k == 1 or temperature == 0.0 or (top_k == 0 and top_p == 0.0)
        return cls(
            greedy=greedy,
            temperature=temperature if temperature > 0 else 1.0,
            top_k=top_k,
            top_p=top_p if 0.0 < top_p < 1.0 else 1.0,
            top_p_min=cfg.top_p_min or 0.0,
            top_p_decay=cfg.top_p_decay if cfg.top_p_decay is not None else 1.0,
            top_p_reset_ids=cfg.top_p_reset_ids,
            repetition_penalty=cfg.repetition_penalty or 1.0,
            presence_penalty=cfg.presence_penalty or 0.0,
            frequency_penalty=cfg.frequency_penalty or 0.0,
            min_tokens=cfg.min_tokens or 0,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size or 0,
            end_ids=[int(end_id)] if end_id is not None and end_id >= 0 else [],
            bad_words=[[int(t) for t in w] for w in (bad_words if bad_words is not None else [])
                       if len(w)],
            embedding_bias=embedding_bias,
            seed=cfg.seed,
            return_log_probs=return_log_probs,
            log_probs_over_kept=log_probs_over_kept,
        )


def make_generator(seed: int | None, sequence_index: int = 0) -> torch.Generator:
    """Generator for one sequence; no seed draws one from the OS (not reproducible)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    if sequence_index:
        # sibling sequences of one request need distinct, still seed-determined streams
        seed = hash((seed, sequence_index))
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return gen


def next_top_p(params: SamplingParams, cur_top_p: float, token: int) -> float:
    """top_p after emitting token: decayed towards top_p_min, reset on top_p_reset_ids."""
    if params.top_p_reset_ids is not None and token == params.top_p_reset_ids:
        return params.top_p
    if params.top_p_decay < 1.0:
        return max(cur_top_p * params.top_p_decay, params.top_p_min)
    return cur_top_p


class SampleRow(Protocol):
    """What the sampler reads from a sequence (Sequence satisfies it)."""

    token_ids: list[int]
    prompt_len: int
    generator: torch.Generator | None
    cur_top_p: float


@dataclass(slots=True)
class SampleOutput:
    tokens: list[int]
    log_probs: list[float] | None  # of the chosen token, after penalties and temperature


def sample(logits: torch.Tensor, rows: Seq[SampleRow],
           params: Seq[SamplingParams]) -> SampleOutput:
    """Pick one token per row of logits [B, vocab] (float32, modified in place)."""
    batch, vocab = logits.shape
    device = logits.device
    assert len(rows) == batch == len(params)
    apply_logits_processors(logits, rows, params)

    tokens = logits.argmax(dim=-1)
    sample_idx = [i for i, p in enumerate(params) if not p.greedy]
    want_log_probs = any(p.return_log_probs for p in params)
    guided = guided_rows(rows)
    if not sample_idx and not want_log_probs:
        if guided:
            check_guided(tokens, rows, guided)
        return SampleOutput(tokens.tolist(), None)  # all greedy: the common fast path
    temps = torch.tensor([p.temperature for p in params], device=device)
    scaled = logits / temps.unsqueeze(1)
    sub = None
    if sample_idx:
        idx = torch.tensor(sample_idx, device=device)
        sub = scaled.index_select(0, idx)
        top_k = [params[i].top_k for i in sample_idx]
        top_p = [rows[i].cur_top_p if params[i].top_p < 1.0 else 1.0 for i in sample_idx]
        sub = _top_k_top_p(sub, top_k, top_p)
        tokens.index_copy_(0, idx, _inverse_cdf(torch.softmax(sub, dim=-1),
                                                [rows[i].generator for i in sample_idx]))
    if guided:
        check_guided(tokens, rows, guided)
    log_probs = None
    if want_log_probs:
        lp = torch.log_softmax(scaled, dim=-1).gather(1, tokens.unsqueeze(1)).squeeze(1)
        log_probs = lp.tolist()
        for i, p in enumerate(params):
            if p.log_probs_over_kept:
                log_probs[i] = _log_prob_over_kept(i, int(tokens[i]), sample_idx, sub)
    return SampleOutput(tokens.tolist(), log_probs)


def _inverse_cdf(probs: torch.Tensor, generators: list) -> torch.Tensor:
    """One token per row of probs [n, vocab], by inverting the row's CDF at a uniform
    draw from the row's own generator (one draw per row, where an exponential race draws
    one per vocabulary entry: about 1 M random numbers per step at 32 rows of a 32 k
    vocabulary). u lies in (0, 1], so a token of probability 0 is never picked."""
    u = torch.tensor([1.0 - torch.rand(1, generator=g).item() for g in generators],
                     dtype=torch.float64).to(probs.device)  # n numbers cross, not n x vocab
    cdf = probs.to(torch.float64).cumsum_(dim=-1)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).squeeze(1)
    return picked.clamp_(max=probs.shape[1] - 1)


def _log_prob_over_kept(row: int, token: int, sample_idx: list[int],
                        kept: torch.Tensor | None) -> float:
    """TensorRT-LLM's normalised log prob: of the token within the set it was sampled
    from. A greedy pick is the top-1 set, so 0.0."""
    if row not in sample_idx or kept is None:
        return 0.0
    return float(torch.log_softmax(kept[sample_idx.index(row)], dim=-1)[token])


def apply_logits_processors(logits: torch.Tensor, rows: Seq[SampleRow],
                            params: Seq[SamplingParams]) -> None:
    """Embedding bias, penalties, bans and guides (everything before temperature), in
    place. A row whose guide allows only banned tokens keeps the guide's tokens."""
    _apply_bias_and_penalties(logits, rows, params)
    guided = guided_rows(rows)
    before = logits[guided] if guided else None  # advanced indexing: a copy
    _apply_bans(logits, rows, params)
    if guided:
        apply_guides(logits, rows, guided, before)


def _apply_bias_and_penalties(logits: torch.Tensor, rows: Seq[SampleRow],
                              params: Seq[SamplingParams]) -> None:
    batch, vocab = logits.shape
    device = logits.device
    for i, p in enumerate(params):
        if p.embedding_bias is not None:
            logits[i] += p.embedding_bias.to(device=device, dtype=logits.dtype)
    rep_rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    if rep_rows:
        # repetition penalty looks at prompt and output tokens
        seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
        for i in rep_rows:
            ids = torch.tensor(rows[i].token_ids, device=device)
            seen[i, ids[ids < vocab]] = True  # (p-tuning ids past the vocabulary: no logit)
        rep = torch.tensor([p.repetition_penalty for p in params], device=device).unsqueeze(1)
        penalized = torch.where(logits > 0, logits / rep, logits * rep)
        logits.copy_(torch.where(seen, penalized, logits))
    pen_rows = [i for i, p in enumerate(params)
                if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0]
    if pen_rows:
        # presence and frequency penalties look at generated tokens only (OpenAI's rule)
        counts = torch.zeros(batch, vocab, device=device)
        for i in pen_rows:
            out = rows[i].token_ids[rows[i].prompt_len :]
            if out:
                ids = torch.tensor(out, device=device)
                counts[i].index_add_(0, ids, torch.ones(len(out), device=device))
        freq = torch.tensor([p.frequency_penalty for p in params], device=device).unsqueeze(1)
        pres = torch.tensor([p.presence_penalty for p in params], device=device).unsqueeze(1)
        logits -= freq * counts + pres * (counts > 0).float()


def _apply_bans(logits: torch.Tensor, rows: Seq[SampleRow],
                params: Seq[SamplingParams]) -> None:
    ban_rows: list[int] = []
    ban_cols: list[int] = []
    for i, p in enumerate(params):
        row = rows[i]
        generated = len(row.token_ids) - row.prompt_len
        banned: set[int] = set()
        if p.end_ids and generated < p.min_tokens:
            banned.update(p.end_ids)
        for word in p.bad_words:
            prefix = word[:-1]
            if not prefix or row.token_ids[-len(prefix):] == prefix:
                banned.add(word[-1])
        if p.no_repeat_ngram_size:
            banned.update(_repeated_ngram_tokens(row.token_ids, p.no_repeat_ngram_size))
        ban_rows.extend([i] * len(banned))
        ban_cols.extend(banned)
    if ban_rows:
        vocab = logits.shape[1]
        keep = [(r, c) for r, c in zip(ban_rows, ban_cols, strict=True) if 0 <= c < vocab]
        if keep:
            r, c = zip(*keep, strict=True)
            logits[list(r), list(c)] = float("-inf")


def _repeated_ngram_tokens(tokens: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in tokens."""
    if len(tokens) < n:
        return set()
    if n == 1:
        return set(tokens)
    prefix = tokens[len(tokens) - n + 1 :]
    return {
        tokens[i + n - 1]
        for i in range(len(tokens) - n + 1)
        if tokens[i : i + n - 1] == prefix
    }


def _top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask (to -inf) everything outside each row's top-k, then outside its top-p mass."""
    if all(k == 0 for k in top_k) and all(p >= 1.0 for p in top_p):
        return logits
    batch, vocab = logits.shape
    device = logits.device
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ks = torch.tensor([k if 0 < k <= vocab else vocab for k in top_k], device=device)
    ranks = torch.arange(vocab, device=device).unsqueeze(0)
    sorted_logits = sorted_logits.masked_fill(ranks >= ks.unsqueeze(1), float("-inf"))
    ps = torch.tensor(top_p, device=device).unsqueeze(1)
    probs = torch.softmax(sorted_logits, dim=-1)
    # drop a token when the mass before it already reaches top_p (the first always stays)
    drop = (probs.cumsum(dim=-1) - probs) >= ps
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
