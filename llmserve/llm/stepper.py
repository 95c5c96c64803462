"""One engine step of the executor: schedule, forward, sample, stop, respond.

Runs on the executor's loop thread only. It owns the live RequestStates, turns the
scheduler's decisions into SeqChunks for the ModelRunner, verifies draft tokens,
forks num_return_sequences siblings after the prompt, advances beam searches
(llmserve/llm/beam_search.py) and emits Responses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

import torch

from llmserve.llm.beam_search import beam_response, mark_first_tokens, wants_beam_now
from llmserve.llm.block_manager import BlockManager
from llmserve.llm.draft_model import DraftModelProposer
from llmserve.llm.engine import SeqChunk
from llmserve.llm.outputs import build_response, error_response
from llmserve.llm.request import FinishReason, Response
from llmserve.llm.sampling import make_generator, next_top_p, sample
from llmserve.llm.scheduler import ScheduledSeq, Scheduler, SchedulerOutput, extra_keys
from llmserve.llm.sequence import RequestState, Sequence, SequenceStatus
from llmserve.llm.speculative import PromptLookupProposer, verify_drafts
from llmserve.llm.stats import (
    InflightBatchingStats,
    IterationStats,
    KvCacheStats,
    RequestStage,
    RequestStats,
    RequestStatsPerIteration,
)

logger = logging.getLogger(__name__)


class Stepper:
    def __init__(self, runner, scheduler: Scheduler,
                 on_dequeued: Callable[[int], None],
                 proposer: PromptLookupProposer | DraftModelProposer | None = None) -> None:
        self.runner = runner
        self.proposer = proposer  # n-gram drafts for running sequences, before each step
        self.scheduler = scheduler
        self.bm: BlockManager = scheduler.bm
        # responses wait here until the caller has recorded the step's statistics
        self.outbox: list[Response] = []
        self.on_dequeued = on_dequeued  # n requests left the queue (admitted or cancelled)
        self.states: dict[int, RequestState] = {}
        self.iteration = 0
        self._touched: dict[Sequence, None] = {}  # ordered set of sequences with news
        self._completed = 0

    # -- request lifecycle ------------------------------------------------------------

    def add(self, state: RequestState) -> None:
        self.states[state.request_id] = state
        self.scheduler.add(state)

    def take_outbox(self) -> list[Response]:
        out, self.outbox = self.outbox, []
        return out

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    @property
    def num_completed(self) -> int:
        return self._completed

    def num_queued(self) -> int:
        return sum(1 for s in self.states.values() if not s.first_scheduled_ns)

    def cancel(self, request_id: int, reason: FinishReason = FinishReason.CANCELLED) -> None:
        state = self.states.pop(request_id, None)
        if state is None:
            return  # finished already (or never known): nothing to free
        if not state.first_scheduled_ns:
            self.on_dequeued(1)
        live = [s for s in state.seqs if not s.is_finished]
        self.scheduler.abort(state)
        self._sync_proposer()
        if state.beam is not None:  # one response carries every beam
            self.outbox.append(beam_response(state, is_final=True, reason=reason))
            return
        for seq in live:
            seq.finish_reason = reason
        for i, seq in enumerate(live):
            self.outbox.append(build_response(state, seq, is_final=i == len(live) - 1))

    def cancel_all(self) -> None:
        for request_id in list(self.states):
            self.cancel(request_id)

    def fail(self, states: list[RequestState], message: str) -> None:
        for state in states:
            if self.states.pop(state.request_id, None) is None:
                continue
            if not state.first_scheduled_ns:
                self.on_dequeued(1)
            self.scheduler.abort(state)
            self.outbox.append(error_response(state, message))
        self._sync_proposer()

    def _sync_proposer(self) -> None:
        """Lets a draft-model proposer free the draft cache of sequences that left."""
        if self.proposer is not None:
            self.proposer.forget_finished(self.scheduler.running)

    def running_states(self) -> list[RequestState]:
        return list({s.state: None for s in self.scheduler.running})

    # -- the step ---------------------------------------------------------------------

    def step(self) -> IterationStats | None:
        """Run one iteration; None when nothing could be scheduled."""
        start = time.perf_counter()
        new0, reused0 = self.bm.total_new, self.bm.total_reused
        if self.proposer is not None:
            self.proposer.propose(self.scheduler.running)
        out = self.scheduler.schedule()
        admitted = 0
        for seq in out.newly_admitted:
            state = seq.state
            if not state.first_scheduled_ns:
                state.first_scheduled_ns = time.monotonic_ns()
                state.first_iter = self.iteration + 1
                admitted += 1
        if admitted:
            self.on_dequeued(admitted)
        if not out.scheduled:
            return None
        self.iteration += 1
        if out.copies:
            self.runner.copy_blocks(out.copies)
        chunks = [self._chunk(ss) for ss in out.scheduled]
        logits = self.runner.forward(chunks)
        self._completed = 0
        self._process(out, chunks, logits)
        self._respond()
        self._sync_proposer()
        stats = self._iteration_stats(out, start, self.bm.total_new - new0,
                                      self.bm.total_reused - reused0)
        return stats

    def _chunk(self, ss: ScheduledSeq) -> SeqChunk:
        seq = ss.seq
        start = seq.num_computed
        num_real = ss.num_tokens - ss.num_draft
        tokens = seq.token_ids[start : start + num_real] + seq.draft_tokens[: ss.num_draft]
        completes = start + num_real == len(seq.token_ids)
        wants_ctx = seq.state.wants_context_logits and seq.in_prompt
        if wants_ctx or ss.num_draft:
            mode = "all"
        else:
            mode = "last" if completes else "none"
        lora = seq.state.request.lora_config
        return SeqChunk(tokens, start, list(seq.block_table), mode,
                        lora_task_id=None if lora is None else int(lora.task_id),
                        prompt_table=seq.state.prompt_table)

    def _process(self, out: SchedulerOutput, chunks: list[SeqChunk],
                 logits: torch.Tensor) -> None:
        row = 0
        to_sample: list[tuple[Sequence, torch.Tensor]] = []
        to_verify: list[tuple[ScheduledSeq, torch.Tensor]] = []
        beam_states: dict[RequestState, None] = {}
        for ss, chunk in zip(out.scheduled, chunks, strict=True):
            seq, state = ss.seq, ss.seq.state
            n_rows = {"all": len(chunk.token_ids), "last": 1, "none": 0}[chunk.logits]
            rows = logits[row : row + n_rows]
            row += n_rows
            num_real = ss.num_tokens - ss.num_draft
            if chunk.logits == "all" and state.wants_context_logits and seq.in_prompt:
                # rows already collected survive a preemption: keep only new positions
                have = sum(t.shape[0] for t in state.context_logits)
                first = max(have - chunk.start_pos, 0)
                n_ctx = min(num_real, seq.prompt_len - chunk.start_pos)
                if n_ctx > first:
                    state.context_logits.append(rows[first:n_ctx].float().cpu())
            seq.num_computed += num_real
            self.bm.cache_full_blocks(seq, extra_keys(seq))
            self.bm.release_out_of_window(seq)
            if seq.num_computed < len(seq.token_ids):
                continue  # more prefill chunks to come
            last = rows[num_real - 1] if chunk.logits == "all" else rows[0]
            if state.beam is not None:  # beams advance together once all have logits
                seq.beam_logits = last
                beam_states[state] = None
                continue
            if ss.num_draft:
                to_verify.append((ss, rows[num_real - 1 :]))
                continue
            seq.draft_tokens, seq.draft_logits = [], None  # not scheduled: now stale
            to_sample.append((seq, last))
            if seq.index == 0 and state.unforked_extra():
                for child in self._fork(seq):
                    to_sample.append((child, last))
        if to_sample:
            self._sample_batch(to_sample)
        for ss, rows in to_verify:
            self._verify(ss, rows)
        for state in beam_states:
            self._beam_step(state)

    def _beam_step(self, state: RequestState) -> None:
        bs = state.beam
        if bs is None or not wants_beam_now(state):
            return
        mark_first_tokens(state, self.iteration)
        step = bs.advance(state)
        for parent, child in step.forks:
            self.scheduler.fork(parent, child)
        done = step.done
        for beam in step.dropped + (bs.finish(state) if done else []):
            self.scheduler.finish(beam)
        if done or state.request.streaming:
            self.outbox.append(beam_response(state, is_final=done))
        if done:
            self.states.pop(state.request_id, None)
            self._completed += 1

    def _fork(self, parent: Sequence) -> list[Sequence]:
        state = parent.state
        children = []
        for index in range(len(state.seqs), state.num_sequences):
            child = Sequence(state, index, list(parent.token_ids), parent.prompt_len,
                             status=SequenceStatus.RUNNING,
                             generator=make_generator(state.params.seed, index),
                             cur_top_p=state.params.top_p)
            if parent.guide is not None:  # nothing accepted yet: the same start state
                child.guide = parent.guide.fork()
            self.scheduler.fork(parent, child)
            child.num_new_blocks = 0
            state.seqs.append(child)
            children.append(child)
        return children

    def _sample_batch(self, items: list[tuple[Sequence, torch.Tensor]]) -> None:
        seqs = [s for s, _ in items]
        batch = torch.stack([r for _, r in items]).float()
        raw = batch.clone() if any(
            s.state.request.output_config.return_generation_logits for s in seqs) else None
        res = sample(batch, seqs, [s.state.params for s in seqs])
        for i, seq in enumerate(seqs):
            seq.decoding_iter += 1
            lp = res.log_probs[i] if res.log_probs is not None else None
            self._append(seq, res.tokens[i], lp, raw[i] if raw is not None else None)

    def _verify(self, ss: ScheduledSeq, rows: torch.Tensor) -> None:
        """Accept draft tokens against the target's rows of this one forward
        (llmserve/llm/speculative.py: token match, or rejection sampling with logits)."""
        seq = ss.seq
        drafts = seq.draft_tokens[: ss.num_draft]
        draft_logits = seq.draft_logits
        seq.draft_tokens, seq.draft_logits = [], None
        seq.num_draft_tokens += len(drafts)
        seq.decoding_iter += 1
        state = seq.state
        ext = state.request.external_draft_tokens_config
        accepted = verify_drafts(
            seq, state.params, rows, drafts,
            lambda token, lp, raw: self._append(seq, token, lp, raw),
            draft_logits=draft_logits,
            threshold=ext.acceptance_threshold if ext is not None and draft_logits is not None
            else None,
            keep_raw=state.request.output_config.return_generation_logits)
        seq.num_accepted_draft_tokens += accepted
        if not seq.is_finished:
            seq.num_computed += accepted  # the accepted drafts' K/V written this step
            self.bm.cache_full_blocks(seq, extra_keys(seq))
            self.bm.release_out_of_window(seq)

    def _append(self, seq: Sequence, token: int, log_prob: float | None,
                raw: torch.Tensor | None) -> bool:
        """Record a sampled token; True when it finished the sequence."""
        state = seq.state
        now = time.monotonic_ns()
        state.first_token_ns = state.first_token_ns or now
        state.last_token_ns = now
        state.last_iter = self.iteration
        self._touched[seq] = None
        reason = FinishReason.NOT_FINISHED
        guide = seq.guide
        if state.stop.is_end(token) or (guide is not None and guide.is_stop(token)):
            reason = FinishReason.END_ID
        else:
            if guide is not None and not guide.accept(token):
                # every sampled token passed the guide's mask: a bug, not the user's error
                logger.error("request %d: token %d is outside its guide", seq.request_id,
                             token)
            seq.token_ids.append(token)
            if log_prob is not None:
                seq.log_probs.append(log_prob)
                seq.cum_log_prob += log_prob
            if raw is not None:
                seq.generation_logits.append(raw.cpu())
            seq.cur_top_p = next_top_p(state.params, seq.cur_top_p, token)
            reason = state.stop.after_append(seq.output_ids)
        if reason is FinishReason.NOT_FINISHED:
            return False
        seq.finish_reason = reason
        self.scheduler.finish(seq)
        return True

    def _respond(self) -> None:
        touched, self._touched = list(self._touched), {}
        by_state: dict[RequestState, list[Sequence]] = {}
        for seq in touched:
            if seq.state.request.streaming or seq.is_finished:
                by_state.setdefault(seq.state, []).append(seq)
        for state, seqs in by_state.items():
            done = state.is_finished
            for i, seq in enumerate(seqs):
                final = done and i == len(seqs) - 1
                self.outbox.append(build_response(state, seq, is_final=final))
            if done:
                self.states.pop(state.request_id, None)
                self._completed += 1

    # -- statistics -------------------------------------------------------------------

    def _iteration_stats(self, out: SchedulerOutput, start: float, new: int,
                         reused: int) -> IterationStats:
        bm = self.bm
        ctx = [ss for ss in out.scheduled if ss.seq.num_generated == 0 or ss.num_tokens > 1]
        life_total = bm.total_new + bm.total_reused
        kv = KvCacheStats(
            max_num_blocks=bm.num_blocks,
            free_num_blocks=bm.num_free_blocks,
            used_num_blocks=bm.num_used_blocks,
            tokens_per_block=bm.block_size,
            cached_num_blocks=bm.num_cached_blocks,
            alloc_total_blocks=new + reused,
            alloc_new_blocks=new,
            reused_blocks=reused,
            cache_hit_rate=bm.total_reused / life_total if life_total else 0.0,
        )
        ifb = InflightBatchingStats(
            num_scheduled_requests=len(out.scheduled),
            num_context_requests=len(ctx),
            num_gen_requests=len(out.scheduled) - len(ctx),
            num_paused_requests=sum(
                1 for s in self.scheduler.waiting if s.status is SequenceStatus.PREEMPTED),
            num_ctx_tokens=sum(ss.num_tokens for ss in ctx),
            num_gen_tokens=out.num_tokens - sum(ss.num_tokens for ss in ctx),
        )
        queued = self.num_queued()
        return IterationStats(
            timestamp=datetime.now().strftime("%m-%d-%Y %H:%M:%S.%f"),
            iter=self.iteration,
            iter_latency_ms=(time.perf_counter() - start) * 1000.0,
            num_active_requests=len(self.states) - queued,
            num_queued_requests=queued,
            num_completed_requests=self._completed,
            max_num_active_requests=self.scheduler.max_batch_size,
            num_new_active_requests=sum(1 for s in out.newly_admitted if s.index == 0),
            num_preempted_requests=len(out.preempted),
            num_tokens=out.num_tokens,
            kv_cache_stats=kv,
            inflight_batching_stats=ifb,
        )

    def request_stats(self, scheduled: set[int] | None = None) -> RequestStatsPerIteration:
        stats = []
        running = {s.request_id for s in self.scheduler.running}
        for rid, state in self.states.items():
            seq = state.seqs[0]
            if not state.first_scheduled_ns:
                stage = RequestStage.QUEUED
            elif seq.in_prompt:
                stage = RequestStage.CONTEXT_IN_PROGRESS
            else:
                stage = RequestStage.GENERATION_IN_PROGRESS
            new = sum(s.num_new_blocks for s in state.seqs)
            reused = seq.num_reused_blocks
            missed = seq.num_missed_blocks
            generated = sum(s.num_generated for s in state.seqs)
            iters = sum(s.decoding_iter for s in state.seqs)
            stats.append(RequestStats(
                id=rid,
                stage=stage,
                context_prefill_position=min(seq.num_computed, seq.prompt_len),
                num_generated_tokens=generated,
                avg_num_decoded_tokens_per_iter=generated / iters if iters else 0.0,
                scheduled=rid in running,
                paused=any(s.status is SequenceStatus.PREEMPTED for s in state.seqs),
                alloc_total_blocks_per_request=new + reused,
                alloc_new_blocks_per_request=new,
                reused_blocks_per_request=reused,
                missed_blocks_per_request=missed,
                kv_cache_hit_rate_per_request=reused / (reused + missed)
                if reused + missed else 0.0,
            ))
        return RequestStatsPerIteration(self.iteration, stats)
