"""Speculative decoding in the executor: verifying draft tokens against the target's
logits (one forward for 1 + k positions) and proposing n-gram prompt-lookup drafts.

Acceptance rules (draft token x at a position, target distribution p after the
request's logits processing, temperature and top-k/top-p):
- greedy requests, or no draft logits: x is accepted while the token the target picks
  at that position (argmax, or a sample from p with the request's generator) equals x.
  For sampled requests this is rejection sampling with a one-hot draft distribution,
  so outputs follow p; with a seed they equal the non-speculative output.
- draft logits and a sampled request: standard speculative rejection sampling. The
  draft logits get the same processing as the target's (pass raw logits), giving q;
  x is accepted when u < p(x) / q(x) with u ~ U[0, 1) from the request's generator;
  on rejection the token is drawn from normalize(max(0, p - q)). Once every draft is
  accepted a bonus token is sampled from p. Outputs follow p exactly.
- draft_acceptance_threshold t (with draft logits, sampled requests): u is replaced
  by t, as TensorRT-LLM's fixed acceptance threshold: x is accepted when
  p(x) / q(x) >= t (deterministic; outputs no longer follow p exactly). Greedy
  requests ignore t: with one-hot p the ratio is >= 1 >= t exactly when x is the
  argmax, so the token-match rule is the same rule.
The log prob reported for every emitted token is the target's, as without drafts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from llmserve.llm.config import PromptLookupConfig
from llmserve.llm.ngram import find_ngram_draft
from llmserve.llm.sampling import (
    SampleRow,
    SamplingParams,
    _top_k_top_p,
    apply_logits_processors,
    sample,
)

if TYPE_CHECKING:
    from llmserve.llm.sequence import Sequence as Seq

# append(token, log_prob, raw_logits_row) -> True when the sequence finished
AppendFn = Callable[[int, float | None, torch.Tensor | None], bool]


def _probs(logits: torch.Tensor, row: SampleRow, params: SamplingParams) -> torch.Tensor:
    """The sampling distribution of one processed logits row [1, vocab] (as sample())."""
    scaled = logits / params.temperature
    top_p = row.cur_top_p if params.top_p < 1.0 else 1.0
    return torch.softmax(_top_k_top_p(scaled, [params.top_k], [top_p]), dim=-1)[0]


def _log_prob(logits: torch.Tensor, params: SamplingParams, token: int) -> float:
    return float(torch.log_softmax(logits[0] / params.temperature, dim=-1)[token])


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    """One sample from unnormalised non-negative weights (exponential-race trick)."""
    noise = torch.empty(weights.shape[0]).exponential_(generator=generator)
    return int((weights.float().cpu() / noise).argmax())


def _reject_sample(target: torch.Tensor, draft: torch.Tensor, token: int,
                   row: SampleRow, params: SamplingParams,
                   threshold: float | None) -> tuple[int, bool]:
    """Rejection step for draft token `token`: (emitted token, accepted)."""
    p = _probs(target, row, params)
    q = _probs(draft, row, params)
    pt, qt = float(p[token]), float(q[token])
    ratio = pt / qt if qt > 0 else (float("inf") if pt > 0 else 0.0)
    if threshold is None:
        accept = float(torch.rand(1, generator=row.generator)) < ratio
    else:
        accept = ratio >= threshold
    if pt > 0 and accept:
        return token, True
    residual = torch.clamp(p - q, min=0.0)
    if float(residual.sum()) <= 0.0:  # p == q up to rounding: p itself is the residual
        residual = p
    return _draw(residual, row.generator), False


def verify_drafts(row: SampleRow, params: SamplingParams, rows: torch.Tensor,
                  drafts: Sequence[int], append: AppendFn, *,
                  draft_logits: torch.Tensor | None = None,
                  threshold: float | None = None, keep_raw: bool = False) -> int:
    """Emit tokens for the 1 + len(drafts) logits rows of one sequence, position by
    position, until a draft is rejected, the sequence finishes or the bonus token is out.

    rows[j] holds the target's logits after the j-th draft (row 0: after the last real
    token). append() records each emitted token (it must extend row.token_ids, which the
    logits processing of the next position reads). Returns how many drafts were
    accepted (emitted tokens equal to their draft, the last one included)."""
    k = len(drafts)
    use_logits = draft_logits is not None and not params.greedy
    accepted = 0
    for j in range(k + 1):
        raw = rows[j].detach().float().clone() if keep_raw else None
        logits = rows[j : j + 1].float().clone()
        if j < k and use_logits:
            assert draft_logits is not None
            apply_logits_processors(logits, [row], [params])
            draft = draft_logits[j : j + 1].to(device=logits.device, dtype=torch.float32).clone()
            apply_logits_processors(draft, [row], [params])
            token, ok = _reject_sample(logits, draft, int(drafts[j]), row, params, threshold)
            lp = _log_prob(logits, params, token) if params.return_log_probs else None
        else:
            res = sample(logits, [row], [params])
            token = res.tokens[0]
            ok = j < k and token == int(drafts[j])
            lp = res.log_probs[0] if res.log_probs is not None else None
        finished = append(token, lp, raw)
        if ok:
            accepted += 1
        if finished or not ok:
            break
    return accepted


def check_draft_logits(logits: torch.Tensor | None, num_tokens: int,
                       vocab_size: int) -> torch.Tensor | None:
    """Draft logits as float32 [num_tokens, vocab] (extra rows dropped; leading unit dims
    or a flat vector of whole rows, as JSON generate requests send, are reshaped); None
    passes. Raises ValueError naming the problem for a wrong shape."""
    if logits is None:
        return None
    t = torch.as_tensor(logits, dtype=torch.float32)
    if t.shape[-1:] != (vocab_size,) and t.numel() % vocab_size == 0 and t.numel():
        t = t.reshape(-1, vocab_size)
    while t.dim() > 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 2 or t.shape[1] != vocab_size or t.shape[0] < num_tokens:
        raise ValueError(
            f"draft_logits must have shape [{num_tokens}, {vocab_size}] (one row per draft "
            f"token, the target's vocab), got {list(t.shape)}")
    return t[:num_tokens].contiguous()


class PromptLookupProposer:
    """Before each step, give every decoding non-beam sequence without pending drafts
    the n-gram drafts of llmserve/llm/ngram.py, never past its max_tokens."""

    def __init__(self, config: PromptLookupConfig) -> None:
        self.config = config

    def forget_finished(self, running: Sequence[Seq]) -> None:
        """Nothing to free: lookups keep no per-sequence state."""

    def propose(self, running: Sequence[Seq]) -> None:
        cfg = self.config
        for seq in running:
            state = seq.state
            if seq.draft_tokens or state.beam is not None or seq.num_pending != 1:
                continue  # external drafts pending, beam search, or still prefilling
            room = state.stop.max_tokens - seq.num_generated - 1  # the bonus token's
            k = min(cfg.max_draft_tokens, room)
            if k <= 0:
                continue
            seq.draft_tokens = find_ngram_draft(seq.token_ids, k, cfg.min_matching_ngram_size,
                                                cfg.max_matching_ngram_size)
