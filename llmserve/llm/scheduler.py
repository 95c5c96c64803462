"""The per-step scheduler: which sequences run, with how many tokens, under which policy.

Each step spends a token budget (max_num_tokens) on running sequences first (decode
tokens and unfinished prefill chunks), then admits waiting ones by priority, then arrival order
(inflight batching). The capacity policy decides admission and what happens when KV
blocks run out: GUARANTEED_NO_EVICT reserves each request's worst case, MAX_UTILIZATION
admits greedily and preempts the newest sequence (recomputed later), STATIC_BATCH admits
a new batch only when nothing runs.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from llmserve.llm.block_manager import BlockManager
from llmserve.llm.config import CapacitySchedulerPolicy
from llmserve.llm.sequence import RequestState, Sequence, SequenceStatus

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens run this step, draft tokens included
    num_draft: int = 0  # trailing draft tokens to verify


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst)
    preempted: list[Sequence] = field(default_factory=list)
    newly_admitted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


def extra_keys(seq: Sequence) -> tuple:
    lora = seq.state.request.lora_config
    return (lora.task_id,) if lora is not None else ()


class Scheduler:
    def __init__(self, block_manager: BlockManager, policy: CapacitySchedulerPolicy,
                 max_batch_size: int, max_num_tokens: int,
                 enable_chunked_context: bool) -> None:
        self.bm = block_manager
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.enable_chunked_context = enable_chunked_context
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    # -- bookkeeping -------------------------------------------------------------

    def add(self, state: RequestState) -> None:
        """Queue a new request: after every waiting request of at least its priority
        (TensorRT-LLM's Request.priority, higher first), so equal priorities stay FIFO."""
        seq = state.seqs[0]
        priority = state.request.priority
        if not self.waiting or self.waiting[-1].state.request.priority >= priority:
            self.waiting.append(seq)
            return
        index = next(i for i, w in enumerate(self.waiting)
                     if w.status is not SequenceStatus.PREEMPTED
                     and w.state.request.priority < priority)
        self.waiting.insert(index, seq)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Run child beside parent, sharing parent's KV blocks (a sampled sibling, a beam)."""
        self.bm.fork(parent, child)
        child.status = SequenceStatus.RUNNING
        self.running.append(child)

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        self.bm.free(seq)
        seq.status = SequenceStatus.FINISHED

    def abort(self, state: RequestState) -> None:
        """Drop every sequence of a request from the queues and free its blocks."""
        for seq in state.seqs:
            if seq in self.running:
                self.running.remove(seq)
            elif seq in self.waiting:
                self.waiting.remove(seq)
            self.bm.free(seq)
            seq.status = SequenceStatus.FINISHED

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def num_slots_used(self) -> int:
        return sum(1 + (s.state.unforked_extra() if s.index == 0 else 0) for s in self.running)

    # -- the step ------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if not seq.num_pending:
                i += 1  # a beam holding its logits until its sibling beams have theirs
                continue
            num = min(seq.num_pending, budget)
            num_draft = 0
            drafts = len(seq.draft_tokens)
            if drafts and num == seq.num_pending and num + drafts <= budget:
                num_draft = drafts
            copies = self.bm.allocate_slots(seq, num + num_draft)
            while copies is None and num_draft:
                num_draft = 0  # drafts are an optimisation: drop them before preempting
                copies = self.bm.allocate_slots(seq, num)
            while copies is None:
                victim = self._victim()
                if victim is None:
                    break
                at = self.running.index(victim)
                self._preempt(victim, out)
                if at < i:  # it already got tokens this step: take them back
                    budget += self._unschedule(victim, out)
                    i -= 1
                if victim is seq:
                    break
                copies = self.bm.allocate_slots(seq, num)
            if copies is None:
                if seq.status is not SequenceStatus.PREEMPTED:
                    i += 1  # a beam waits: beams are never evicted (see _victim)
                continue
            out.copies.extend(copies)
            out.scheduled.append(ScheduledSeq(seq, num + num_draft, num_draft))
            budget -= num + num_draft
            i += 1
        if out.preempted or not self._may_admit():
            return out
        self._admit(out, budget)
        return out

    def _may_admit(self) -> bool:
        if self.policy is CapacitySchedulerPolicy.STATIC_BATCH:
            return not self.running
        return True

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        slots = self.num_slots_used()
        reserved = self._reserved() if self._reserving() else 0
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            need_slots = 1 + (seq.state.unforked_extra() if seq.index == 0 else 0)
            if slots + need_slots > self.max_batch_size:
                break
            computed: list[int] = []
            if not (seq.state.wants_context_logits and seq.in_prompt):
                # (context logits need every prompt row computed: no reuse then)
                computed = self.bm.computed_blocks(seq, extra_keys(seq))
            pending = len(seq.token_ids) - len(computed) * self.bm.block_size
            # a recomputation after preemption may always be chunked (it is internal)
            chunkable = self.enable_chunked_context or seq.num_generated > 0
            if pending > budget and not chunkable:
                break
            num = min(pending, budget)
            worst = self._worst_case(seq) * need_slots
            if self._reserving() and self.bm.num_free_blocks - reserved < worst:
                break
            if (not self._reserving() and seq.state.beam is not None
                    and self._beam_worst_total() + worst > self.bm.num_blocks):
                break  # beams are never evicted: all of them must always fit together
            copies = self.bm.allocate_slots(seq, num, computed)
            if copies is None:
                break
            self.waiting.popleft()
            if seq.status is SequenceStatus.WAITING:
                out.newly_admitted.append(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            num_draft = 0
            if num == pending and seq.draft_tokens and num + len(seq.draft_tokens) <= budget:
                extra = self.bm.allocate_slots(seq, num + len(seq.draft_tokens))
                if extra is not None:
                    num_draft = len(seq.draft_tokens)
                    copies.extend(extra)
            out.copies.extend(copies)
            out.scheduled.append(ScheduledSeq(seq, num + num_draft, num_draft))
            budget -= num + num_draft
            slots += need_slots
            if self._reserving():
                reserved += max(0, worst - self.bm.held(seq))

    def _victim(self) -> Sequence | None:
        """The newest running sequence that is not a beam. Beams of one request advance
        together, so they are never preempted; instead beam requests are admitted only
        while all beam requests' worst cases fit in the cache (under every policy)."""
        for seq in reversed(self.running):
            if seq.state.beam is None:
                return seq
        logger.warning("KV cache exhausted with only beam search requests running")
        return None

    @staticmethod
    def _unschedule(seq: Sequence, out: SchedulerOutput) -> int:
        for k, ss in enumerate(out.scheduled):
            if ss.seq is seq:
                del out.scheduled[k]
                return ss.num_tokens
        return 0

    def _beam_worst_total(self) -> int:
        states = {s.state for s in self.running if s.state.beam is not None}
        return sum(self._beam_worst(state) for state in states)

    def _beam_worst(self, state: RequestState) -> int:
        """Blocks a beam request can hold at most: a full table per beam."""
        seq0 = state.seqs[0]
        return self.bm.blocks_for(seq0.prompt_len + state.stop.max_tokens) * state.num_sequences

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        if self.policy is not CapacitySchedulerPolicy.MAX_UTILIZATION:
            logger.warning("KV cache exhausted under %s: preempting request %d",
                           self.policy.name, seq.request_id)
        self.running.remove(seq)
        self.bm.free(seq)
        seq.status = SequenceStatus.PREEMPTED
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    # -- capacity reservation (GUARANTEED_NO_EVICT, STATIC_BATCH) -------------------

    def _reserving(self) -> bool:
        return self.policy is not CapacitySchedulerPolicy.MAX_UTILIZATION

    def _worst_case(self, seq: Sequence) -> int:
        state = seq.state
        total = seq.prompt_len + state.stop.max_tokens + len(seq.draft_tokens)
        if state.beam is None:  # an attention window bounds what a sequence holds
            span = min(total, self.max_num_tokens) + len(seq.draft_tokens)
            blocks = self.bm.max_blocks_held(total, span)
        else:
            blocks = self.bm.blocks_for(total)
        # siblings share the prompt's partial block until one copies it on write (a
        # beam's copy replaces a shared block: a full table per beam is its worst case)
        return blocks + (1 if state.num_sequences > 1 and state.beam is None else 0)

    def _reserved(self) -> int:
        total = 0
        beam_states: set[RequestState] = set()
        for seq in self.running:
            if seq.state.beam is not None:
                beam_states.add(seq.state)
                continue
            worst = self._worst_case(seq)
            total += max(0, worst - self.bm.held(seq))
            if seq.index == 0:
                total += seq.state.unforked_extra() * worst
        for state in beam_states:
            # beams share blocks: reserve each beam's worst case less the distinct
            # blocks the request already holds
            held = {b for beam in state.seqs for b in beam.block_table}
            total += max(0, self._beam_worst(state) - len(held))
        return total
