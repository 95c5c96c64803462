"""Beam search for the executor: candidate selection, finished hypotheses and stopping
(transformers' rules), beams as Sequences on shared KV blocks, and beam responses.
The exact semantics are in BeamSearch's docstring.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from llmserve.llm.outputs import perf_metrics
from llmserve.llm.request import FinishReason, Response, Result, SamplingConfig
from llmserve.llm.sampling import SamplingParams, apply_logits_processors
from llmserve.llm.sequence import RequestState, Sequence, SequenceStatus
from llmserve.llm.stop import StopCriteria

logger = logging.getLogger(__name__)

EarlyStopping = bool | str  # True | False | "never"


def early_stopping_mode(value: int | bool | None) -> EarlyStopping:
    """TensorRT-LLM's int early_stopping as transformers' True / False / "never"."""
    if value is None or value is True or value == 1:
        return True
    if value is False or value == 0:
        return False
    return "never"


@dataclass(slots=True)
class BeamParams:
    width: int
    num_return: int
    length_penalty: float = 0.0
    early_stopping: EarlyStopping = True
    diversity_rate: float = 0.0

    @classmethod
    def from_config(cls, sc: SamplingConfig) -> BeamParams:
        return cls(
            width=sc.beam_width,
            num_return=sc.num_return_sequences or sc.beam_width,
            length_penalty=float(sc.length_penalty) if sc.length_penalty is not None else 0.0,
            early_stopping=early_stopping_mode(sc.early_stopping),
            diversity_rate=float(sc.beam_search_diversity_rate or 0.0),
        )


@dataclass(slots=True)
class Candidate:
    parent: int  # index of the beam it extends
    token: int
    log_prob: float  # the token's log probability
    score: float  # the parent's beam score + log_prob - diversity penalty


@dataclass(slots=True)
class Hypothesis:
    token_ids: list[int]  # generated tokens, end id excluded
    log_probs: list[float]
    cum_log_prob: float  # includes the end token's log prob when it ended on the end id
    score: float  # ranking score normalised by length ** length_penalty
    finish_reason: FinishReason
    generation_logits: list[torch.Tensor] = field(default_factory=list)


def select_candidates(log_probs: torch.Tensor, beam_scores: torch.Tensor, k: int,
                      diversity_rate: float = 0.0) -> list[Candidate]:
    """The best k continuations of the beams, best first.

    log_probs [beams, vocab], beam_scores [beams]. Per beam only its top k tokens can be
    among the best k overall, so each beam's top k is ranked (that rank is what the
    diversity rate penalises) and the best k of those are returned.
    """
    beams, vocab = log_probs.shape
    per_beam = min(k, vocab)
    values, tokens = log_probs.topk(per_beam, dim=-1)
    total = values + beam_scores.to(values.device, values.dtype).unsqueeze(1)
    if diversity_rate:
        ranks = torch.arange(per_beam, device=values.device, dtype=values.dtype)
        total = total - diversity_rate * ranks.unsqueeze(0)
    best, pos = total.reshape(-1).topk(min(k, beams * per_beam))
    parents = (pos // per_beam).tolist()
    cols = (pos % per_beam).tolist()
    toks = tokens.cpu()
    vals = values.cpu()
    out = []
    for score, p, c in zip(best.tolist(), parents, cols, strict=True):
        if score == float("-inf"):
            break  # banned tokens: nothing further is a real continuation
        out.append(Candidate(p, int(toks[p, c]), float(vals[p, c]), float(score)))
    return out


@dataclass(slots=True)
class BeamStep:
    """What one beam step asks of the scheduler: forked beams, freed beams."""

    done: bool
    forks: list[tuple[Sequence, Sequence]] = field(default_factory=list)  # (parent, child)
    dropped: list[Sequence] = field(default_factory=list)


class BeamSearch:
    """The beam search state of one request; its running beams are state.seqs.

    Semantics, per request of beam width W (matching transformers' `_beam_search`):
    - Every step all W running beams run one token together (the first step has only the
      prompt). Logits get the request's bias / penalties / bans, then temperature, then
      log_softmax. Each beam keeps its top 2W tokens; candidate score = beam score + token
      log prob - beam_search_diversity_rate * rank of the token within its beam (0-based;
      TensorRT-LLM's diverse beam search, 0 = off). The best 2W candidates overall are kept.
    - A candidate "hits stop" on the end id, a stop word, or reaching max_tokens. Among the
      best W candidates, those that hit stop become finished hypotheses with score
      beam_score / (generated_length ** length_penalty), generated_length counting the end
      token; the best W hypotheses are kept. The best W candidates that do not hit stop
      become the next running beams.
    - The request ends when no candidate continues; when early_stopping is True and W
      hypotheses exist; or when W hypotheses exist and the best running beam can no longer
      beat the worst of them: best_running_score / (L ** length_penalty) <= worst, with L the
      generated length now (early_stopping False) or max_tokens (early_stopping "never" with
      length_penalty > 0). TensorRT-LLM's int early_stopping maps: None or 1 -> True,
      0 -> False, anything else -> "never". length_penalty None means 0 (TensorRT-LLM).
    - Output: the best num_return_sequences (default W) hypotheses by score. The end id is
      not part of output_token_ids (as everywhere in the executor) but its log prob is in
      cum_log_probs; with a diversity rate the ranking scores include the penalties while
      cum_log_probs and log_probs are the true log probabilities.
    - top_k / top_p / seed do not apply (beam search is deterministic; a warning says
      so). Beams are never preempted: the scheduler admits a beam request only while every
      beam request's worst case (a full block table per beam) fits in the KV cache.
    """

    def __init__(self, params: BeamParams, sampling: SamplingParams, stop: StopCriteria,
                 prompt: list[int]) -> None:
        self.params = params
        self.sampling = sampling
        self.stop = stop
        self.prompt = prompt
        self.finished: list[Hypothesis] = []  # best first, at most width
        self.done = False
        self.steps = 0
        self.dropped_new_blocks = 0  # new blocks of beams that were dropped

    @classmethod
    def for_request(cls, state: RequestState) -> BeamSearch:
        sc = state.request.sampling_config
        return cls(BeamParams.from_config(sc), state.params, state.stop,
                   list(state.seqs[0].token_ids))

    # -- the pure search step --------------------------------------------------------

    def _length_norm(self, length: int) -> float:
        return float(length) ** self.params.length_penalty

    def _hits_stop(self, parent: Sequence, token: int) -> FinishReason:
        if self.stop.is_end(token):
            return FinishReason.END_ID
        generated = parent.num_generated + 1
        if self.stop.stop_words:
            return self.stop.after_append(parent.output_ids + [token])
        if generated >= self.stop.max_tokens:
            return FinishReason.LENGTH
        return FinishReason.NOT_FINISHED

    def search_step(self, beams: list[Sequence], log_probs: torch.Tensor,
                    raw: torch.Tensor | None = None) -> list[Candidate]:
        """Rank continuations, record finished hypotheses, decide whether to stop.

        Returns the candidates that become the next running beams (best first; empty
        when the search is done)."""
        p = self.params
        width = p.width
        scores = torch.tensor([b.beam_score for b in beams], dtype=torch.float32)
        cands = select_candidates(log_probs, scores, 2 * width, p.diversity_rate)
        self.steps += 1
        running: list[Candidate] = []
        new_hyps: list[Hypothesis] = []
        any_continues = False
        full = p.early_stopping is True and len(self.finished) >= width
        for rank, c in enumerate(cands):
            parent = beams[c.parent]
            reason = self._hits_stop(parent, c.token)
            if reason is FinishReason.NOT_FINISHED:
                any_continues = True
                if len(running) < width:
                    running.append(c)
                continue
            if rank >= width or full:
                continue  # only the top W candidates may finish (transformers' rule)
            length = parent.num_generated + 1
            tokens = parent.output_ids + ([] if reason is FinishReason.END_ID else [c.token])
            logits = list(parent.generation_logits)
            if raw is not None and reason is not FinishReason.END_ID:
                logits.append(raw[c.parent])
            new_hyps.append(Hypothesis(
                tokens, parent.log_probs + [c.log_prob], parent.cum_log_prob + c.log_prob,
                c.score / self._length_norm(length), reason, logits))
        if new_hyps:
            merged = self.finished + new_hyps
            merged.sort(key=lambda h: h.score, reverse=True)  # stable: older first on ties
            self.finished = merged[:width]
        if not any_continues or not running:
            self.done = True
        elif len(self.finished) >= width:
            if p.early_stopping is True:
                self.done = True
            else:
                length = beams[0].num_generated + 1
                if p.early_stopping == "never" and p.length_penalty > 0.0:
                    length = self.stop.max_tokens
                best = running[0].score / self._length_norm(length)
                if best <= min(h.score for h in self.finished):
                    self.done = True
        return [] if self.done else running

    # -- applying a step to the request's Sequences -------------------------------------

    def advance(self, state: RequestState) -> BeamStep:
        """One beam step on the held logits rows of all running beams.

        The caller applies the result to the scheduler: it forks each (parent, child)
        (a beam chosen by several candidates: its KV blocks shared, the partial last block
        copied on the next write), then frees the dropped beams."""
        beams = list(state.seqs)
        rows = torch.stack([b.beam_logits for b in beams]).float()  # type: ignore[misc]
        for b in beams:
            b.beam_logits = None
        want_raw = state.request.output_config.return_generation_logits
        raw = rows.cpu().clone() if want_raw else None
        logits = rows.clone()
        apply_logits_processors(logits, beams, [self.sampling] * len(beams))
        logits /= self.sampling.temperature
        log_probs = torch.log_softmax(logits, dim=-1)
        chosen = self.search_step(beams, log_probs, raw)
        if self.done:
            return BeamStep(done=True)
        step = BeamStep(done=False)
        children: list[Sequence] = []
        used: set[int] = set()
        for i, c in enumerate(chosen):
            parent = beams[c.parent]
            if c.parent in used:
                child = self._fork(state, parent, i)
                step.forks.append((parent, child))
                children.append(child)
            else:
                used.add(c.parent)
                parent.index = i
                children.append(parent)
        step.dropped = [self._drop(beam) for i, beam in enumerate(beams) if i not in used]
        for child, c in zip(children, chosen, strict=True):
            child.token_ids.append(c.token)
            child.log_probs.append(c.log_prob)
            child.cum_log_prob += c.log_prob
            child.beam_score = c.score
            child.decoding_iter += 1
            if raw is not None:
                child.generation_logits.append(raw[c.parent])
        state.seqs = children
        return step

    def _fork(self, state: RequestState, parent: Sequence, index: int) -> Sequence:
        return Sequence(state, index, list(parent.token_ids), parent.prompt_len,
                        status=SequenceStatus.RUNNING, cur_top_p=parent.cur_top_p,
                        log_probs=list(parent.log_probs), cum_log_prob=parent.cum_log_prob,
                        generation_logits=list(parent.generation_logits),
                        beam_score=parent.beam_score, decoding_iter=parent.decoding_iter)

    def _drop(self, beam: Sequence) -> Sequence:
        self.dropped_new_blocks += beam.num_new_blocks
        beam.finish_reason = FinishReason.NOT_FINISHED
        return beam

    def finish(self, state: RequestState) -> list[Sequence]:
        """The search is over: the running beams, for the caller to free."""
        return [self._drop(beam) for beam in state.seqs if not beam.is_finished]

    # -- outputs ------------------------------------------------------------------------

    def _running_hypotheses(self, beams: list[Sequence],
                            reason: FinishReason) -> list[Hypothesis]:
        return [Hypothesis(b.output_ids, list(b.log_probs), b.cum_log_prob,
                           b.beam_score / self._length_norm(max(b.num_generated, 1)),
                           reason, list(b.generation_logits)) for b in beams]

    def final_hypotheses(self, beams: list[Sequence],
                         reason: FinishReason = FinishReason.LENGTH) -> list[Hypothesis]:
        """The returned beams: best hypotheses, topped up with running beams (given
        reason) when fewer than num_return_sequences finished (cancel)."""
        n = self.params.num_return
        hyps = list(self.finished)
        if len(hyps) < n:
            hyps += self._running_hypotheses(beams, reason)
            hyps.sort(key=lambda h: h.score, reverse=True)
        return hyps[:n]

    def current_hypotheses(self, beams: list[Sequence]) -> list[Hypothesis]:
        """Streaming: the running beams so far, best first."""
        ordered = sorted(beams, key=lambda b: b.beam_score, reverse=True)
        return self._running_hypotheses(ordered, FinishReason.NOT_FINISHED)[
            : self.params.num_return]


def beam_response(state: RequestState, *, is_final: bool,
                  reason: FinishReason = FinishReason.LENGTH) -> Response:
    """One Result for all beams of a beam request.

    Streaming (TensorRT-LLM's behaviour): beams can rewrite their history, so every
    streaming response carries all tokens generated so far for every current beam
    (not a delta) and no prompt; the final one carries the returned beams. Non-streaming:
    only the final response, each beam with the prompt unless exclude_input_from_output.
    reason: finish reason of beams still running at the end (cancel)."""
    bs = state.beam
    assert bs is not None
    req = state.request
    oc = req.output_config
    if is_final:
        hyps = bs.final_hypotheses(state.seqs, reason)
    else:
        hyps = bs.current_hypotheses(state.seqs)
    with_prompt = not req.streaming and not oc.exclude_input_from_output
    tokens = [(bs.prompt if with_prompt else []) + h.token_ids for h in hyps]
    result = Result(
        is_final=is_final,
        output_token_ids=tokens,
        finish_reasons=[h.finish_reason if is_final else FinishReason.NOT_FINISHED
                        for h in hyps],
        sequence_index=0,
        is_sequence_final=is_final,
        decoding_iter=bs.steps,
    )
    if oc.return_log_probs:
        result.log_probs = [list(h.log_probs[: len(h.token_ids)]) for h in hyps]
        result.cum_log_probs = [h.cum_log_prob for h in hyps]
    if oc.return_context_logits and state.context_logits:
        if not req.streaming or not state.context_logits_sent:
            result.context_logits = torch.cat(state.context_logits).cpu()
            state.context_logits_sent = True
    if oc.return_generation_logits:
        result.generation_logits = _stack_logits(hyps)
    if oc.return_perf_metrics and state.seqs:
        metrics = perf_metrics(state, state.seqs[0])
        kv = metrics.kv_cache_metrics
        kv.num_new_allocated_blocks = bs.dropped_new_blocks + sum(
            b.num_new_blocks for b in state.seqs if not b.is_finished)
        kv.num_total_allocated_blocks = kv.num_new_allocated_blocks + kv.num_reused_blocks
        result.request_perf_metrics = metrics
    return Response(state.request_id, result=result, client_id=req.client_id)


def _stack_logits(hyps: list[Hypothesis]) -> torch.Tensor | None:
    """[beams, longest, vocab], shorter beams padded with zeros."""
    rows = [h.generation_logits for h in hyps]
    longest = max((len(r) for r in rows), default=0)
    if not longest:
        return None
    vocab = next(r[0].shape[-1] for r in rows if r)
    out = torch.zeros(len(rows), longest, vocab)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.stack(r).float().cpu()
    return out


def wants_beam_now(state: RequestState) -> bool:
    """True when every running beam holds the logits row of its newest token."""
    return bool(state.seqs) and all(
        b.status is SequenceStatus.RUNNING and not b.num_pending and b.beam_logits is not None
        for b in state.seqs)


def mark_first_tokens(state: RequestState, iteration: int) -> None:
    now = time.monotonic_ns()
    state.first_token_ns = state.first_token_ns or now
    state.last_token_ns = now
    state.last_iter = iteration
