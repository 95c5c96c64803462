"""Draft-model speculation inside the executor (vLLM's draft-model speculative
decoding): a small model sharing the target's vocabulary proposes k greedy tokens for
every decoding sequence before each step, in k batched forwards over its own paged KV
cache; the target then verifies them in its one forward (speculative.py).

The draft cache remembers which tokens its positions hold. Before proposing, each
sequence's draft KV is trusted up to the longest prefix of those tokens that still
matches the sequence (accepted drafts stay valid, rejected ones are overwritten), and
only the rest is run through the draft: usually the last accepted token plus the
target's bonus token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from llmserve.core.errors import InvalidArgument
from llmserve.llm.engine.attention import SeqChunk

if TYPE_CHECKING:
    from llmserve.llm.engine import ModelRunner
    from llmserve.llm.sequence import Sequence as Seq

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _DraftSeq:
    table: list[int] = field(default_factory=list)
    written: list[int] = field(default_factory=list)  # token at each cached position


class DraftModelProposer:
    """Proposes up to max_draft_tokens greedy draft tokens per decoding sequence."""

    def __init__(self, runner: ModelRunner, max_draft_tokens: int, target_vocab: int,
                 num_blocks: int, block_size: int) -> None:
        if runner.arch.vocab_size != target_vocab:
            raise InvalidArgument(
                f"draft model vocab size {runner.arch.vocab_size} differs from the "
                f"target's {target_vocab}: the models must share a tokenizer")
        if max_draft_tokens < 1:
            raise InvalidArgument(f"max_draft_tokens must be >= 1, got {max_draft_tokens}")
        self.runner = runner
        self.k = max_draft_tokens
        self.max_positions = runner.arch.max_position_embeddings
        self.block_size = block_size
        runner.allocate_kv_cache(num_blocks, block_size)
        self.free = list(range(num_blocks - 1, -1, -1))
        self.seqs: dict[int, tuple[Seq, _DraftSeq]] = {}
        self.num_proposed = 0

    # -- cache bookkeeping ------------------------------------------------------------

    def forget_finished(self, running: Sequence[Seq]) -> None:
        alive = {id(s) for s in running}
        for key in [k for k in self.seqs if k not in alive]:
            _seq, draft = self.seqs.pop(key)
            self.free.extend(draft.table)

    def _reserve(self, draft: _DraftSeq, num_tokens: int) -> bool:
        needed = -(-num_tokens // self.block_size) - len(draft.table)
        if needed > len(self.free):
            return False
        for _ in range(needed):
            draft.table.append(self.free.pop())
        return True

    def _eligible(self, seq: Seq) -> int:
        """Drafts this sequence may take now (0: none)."""
        state = seq.state
        if (seq.draft_tokens or state.beam is not None or seq.num_pending != 1
                or state.prompt_table is not None):
            # external drafts pending, beam search, still prefilling, or p-tuning ids
            # that the draft model's vocabulary cannot embed
            return 0
        room = state.stop.max_tokens - seq.num_generated - 1  # the bonus token's
        return min(self.k, room)

    # -- proposing --------------------------------------------------------------------

    def propose(self, running: Sequence[Seq]) -> None:
        self.forget_finished(running)
        active: list[tuple[Seq, _DraftSeq, int]] = []
        chunks: list[SeqChunk] = []
        for seq in running:
            k = self._eligible(seq)
            if k <= 0:
                continue
            _seq, draft = self.seqs.setdefault(id(seq), (seq, _DraftSeq()))
            tokens = seq.token_ids
            known = 0
            limit = min(len(draft.written), len(tokens) - 1)
            while known < limit and draft.written[known] == tokens[known]:
                known += 1
            if (len(tokens) + k - 1 > self.max_positions
                    or not self._reserve(draft, len(tokens) + k - 1)):
                continue  # past the draft's context, or its cache is full: plain decode
            del draft.written[known:]
            draft.written.extend(tokens[known:])
            chunks.append(SeqChunk(list(tokens[known:]), known, draft.table, "last"))
            active.append((seq, draft, k))
        if not active:
            return
        drafted: list[list[int]] = [[] for _ in active]
        live = list(range(len(active)))
        while live:  # one batched forward per draft position
            next_ids = self.runner.forward(chunks).argmax(dim=-1).tolist()
            chunks, still = [], []
            for i, token in zip(live, next_ids, strict=True):
                _seq, draft, k = active[i]
                drafted[i].append(int(token))
                if len(drafted[i]) < k:
                    chunks.append(SeqChunk([int(token)], len(draft.written), draft.table,
                                           "last"))
                    draft.written.append(int(token))
                    still.append(i)
            live = still
        for (seq, _draft, _k), tokens in zip(active, drafted, strict=True):
            seq.draft_tokens = tokens
            self.num_proposed += len(tokens)


def draft_model_proposer(path: str, max_draft_tokens: int, target_vocab: int,
                         max_batch_size: int, target_kv_tokens: int, device: str,
                         dtype: str) -> DraftModelProposer:
    """Loads the draft checkpoint with a KV cache of as many tokens as the target's
    (it never holds more sequences) plus a block per sequence for the drafts."""
    from llmserve.llm.engine import ModelRunner

    runner = ModelRunner(path, dtype=dtype, device=device)
    block_size = 32
    num_blocks = -(-target_kv_tokens // block_size) + max_batch_size
    logger.info("draft model %s: %d draft tokens per step, KV cache of %d blocks", path,
                max_draft_tokens, num_blocks)
    with torch.inference_mode():
        return DraftModelProposer(runner, max_draft_tokens, target_vocab, num_blocks,
                                  block_size)
