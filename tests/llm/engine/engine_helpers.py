"""Helpers for the engine tests: a shuffled block pool and a greedy loop on the runner."""

from __future__ import annotations

import random

import torch

from llmserve.llm.engine import ModelRunner, SeqChunk


class BlockPool:
    """Hands out physical blocks in a shuffled order so tables are non-contiguous."""

    def __init__(self, num_blocks: int, seed: int = 0):
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)

    def table_for(self, table: list[int], num_tokens: int, block_size: int) -> list[int]:
        while len(table) * block_size < num_tokens:
            table.append(self.free.pop())
        return table


def random_tokens(n: int, vocab: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (n,), generator=gen).tolist()


def runner_greedy(
    runner: ModelRunner, prompts: list[list[int]], max_new_tokens: int, pool: BlockPool
) -> list[list[int]]:
    """Greedy decoding of several prompts together: one prefill forward for all, then
    one batched decode forward per token."""
    bs = runner.block_size
    tables = [pool.table_for([], len(p), bs) for p in prompts]
    chunks = [SeqChunk(list(p), 0, t, "last") for p, t in zip(prompts, tables, strict=True)]
    logits = runner.forward(chunks)
    outputs = [[int(t)] for t in logits.argmax(-1).tolist()]
    for _ in range(max_new_tokens - 1):
        chunks = []
        for prompt, table, out in zip(prompts, tables, outputs, strict=True):
            pos = len(prompt) + len(out) - 1
            pool.table_for(table, pos + 1, bs)
            chunks.append(SeqChunk([out[-1]], pos, table, "last"))
        logits = runner.forward(chunks)
        for out, tok in zip(outputs, logits.argmax(-1).tolist(), strict=True):
            out.append(int(tok))
    return outputs
