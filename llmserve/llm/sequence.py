"""Internal per-request state: a RequestState groups the Sequences of one request.

A Sequence is the scheduling unit (tokens, KV block table, explicit lifecycle state);
num_return_sequences > 1 forks extra Sequences that share the prompt's KV blocks, and
beam search keeps one Sequence per running beam (llmserve/llm/beam_search.py).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from llmserve.llm.request import FinishReason, Request
from llmserve.llm.sampling import SamplingParams
from llmserve.llm.stop import StopCriteria

if TYPE_CHECKING:
    from llmserve.llm.beam_search import BeamSearch
    from llmserve.llm.guided import GuideMatcher


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Sequence:
    state: RequestState
    index: int  # sequence_index within the request
    token_ids: list[int]  # prompt + generated tokens
    prompt_len: int
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed: int = 0  # tokens whose K/V are in the cache
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # hashes of full blocks, in order
    num_new_blocks: int = 0
    num_reused_blocks: int = 0
    num_missed_blocks: int = 0
    generator: torch.Generator | None = None
    cur_top_p: float = 0.0
    log_probs: list[float] = field(default_factory=list)
    cum_log_prob: float = 0.0
    generation_logits: list[torch.Tensor] = field(default_factory=list)
    finish_reason: FinishReason = FinishReason.NOT_FINISHED
    num_sent: int = 0  # generated tokens already delivered (streaming)
    draft_tokens: list[int] = field(default_factory=list)  # proposed, awaiting verification
    draft_logits: torch.Tensor | None = None  # [len(draft_tokens), vocab] external drafts
    num_draft_tokens: int = 0
    num_accepted_draft_tokens: int = 0
    decoding_iter: int = 0  # steps that produced tokens for this sequence
    # beam search: the running score (sum of log probs, minus diversity penalties) and
    # the logits row of the newest token, held until every beam of the request has one
    beam_score: float = 0.0
    beam_logits: torch.Tensor | None = None
    guide: GuideMatcher | None = None  # guided decoding: the grammar's state

    @property
    def request_id(self) -> int:
        return self.state.request_id

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def num_pending(self) -> int:
        """Tokens not yet in the KV cache (a prefill remainder, or the last sampled token)."""
        return len(self.token_ids) - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def in_prompt(self) -> bool:
        """True while the original prompt is still being prefilled (first time)."""
        return self.num_computed < self.prompt_len and self.num_generated == 0


class RequestState:
    """Everything the executor tracks for one enqueued request."""

    def __init__(self, request_id: int, request: Request, params: SamplingParams,
                 stop: StopCriteria, num_sequences: int) -> None:
        self.request_id = request_id
        self.request = request
        self.params = params
        self.stop = stop
        self.num_sequences = num_sequences
        self.arrival_ns = time.monotonic_ns()
        self.first_scheduled_ns = 0
        self.first_token_ns = 0
        self.last_token_ns = 0
        self.first_iter: int | None = None
        self.last_iter: int | None = None
        self.context_logits: list[torch.Tensor] = []
        self.context_logits_sent = False
        self.beam: BeamSearch | None = None  # beam_width > 1: the search's own state
        prompt = [int(t) for t in request.input_token_ids]  # numpy / torch ints too
        # p-tuning: the request's prompt table (the executor puts it on the engine's
        # device and dtype) and the prompt's extra ids, which join the block hash
        ptc = request.prompt_tuning_config
        self.prompt_table: torch.Tensor | None = None if ptc is None else ptc.embedding_table
        self.token_extra_ids: list[int] | None = None
        if ptc is not None and ptc.input_token_extra_ids is not None:
            self.token_extra_ids = [int(t) for t in ptc.input_token_extra_ids]
        self.seqs: list[Sequence] = [Sequence(self, 0, prompt, len(prompt))]
        self.seqs[0].cur_top_p = params.top_p

    @property
    def forked(self) -> bool:
        return len(self.seqs) == self.num_sequences

    @property
    def is_finished(self) -> bool:
        return self.forked and all(s.is_finished for s in self.seqs)

    @property
    def wants_context_logits(self) -> bool:
        return self.request.output_config.return_context_logits

    def unforked_extra(self) -> int:
        """Sequences still to be forked from sequence 0 (slots they will need)."""
        return self.num_sequences - len(self.seqs)
