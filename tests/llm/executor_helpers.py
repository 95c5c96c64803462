"""Helpers for the executor tests: prompts, collecting responses, greedy references."""

from __future__ import annotations

import datetime
import time

import torch

from llmserve.llm import Executor, OutputConfig, Request, Response, SamplingConfig

TIMEOUT = datetime.timedelta(seconds=60)


def prompt(n: int, seed: int, vocab: int = 300) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (n,), generator=gen).tolist()


def greedy_request(tokens: list[int], max_tokens: int, **kw) -> Request:
    kw.setdefault("output_config", OutputConfig(exclude_input_from_output=True))
    return Request(list(tokens), max_tokens, **kw)


def sampled_request(tokens: list[int], max_tokens: int, seed: int, **kw) -> Request:
    sc = SamplingConfig(top_k=20, top_p=0.9, temperature=1.0, seed=seed,
                        num_return_sequences=kw.pop("n", None))
    return greedy_request(tokens, max_tokens, sampling_config=sc, **kw)


def collect(ex: Executor, ids: list[int], timeout_s: float = 60.0) -> dict[int, list[Response]]:
    """All responses of ids, until each has its final one."""
    out: dict[int, list[Response]] = {i: [] for i in ids}
    pending = set(ids)
    deadline = time.monotonic() + timeout_s
    while pending:
        assert time.monotonic() < deadline, f"requests {pending} did not finish"
        for r in ex.await_responses(datetime.timedelta(seconds=1)):
            out[r.request_id].append(r)
            if r.is_final:
                pending.discard(r.request_id)
    return out


def tokens_of(responses: list[Response], sequence_index: int = 0) -> list[int]:
    """Concatenated output tokens of one sequence (deltas when streaming)."""
    toks: list[int] = []
    for r in responses:
        assert not r.has_error(), r.error_msg
        if r.result.sequence_index == sequence_index:
            toks += r.result.output_token_ids[0]
    return toks


def run(ex: Executor, requests: list[Request]) -> list[list[Response]]:
    ids = ex.enqueue_requests(requests)
    got = collect(ex, ids)
    return [got[i] for i in ids]


def wait_idle(ex: Executor, timeout_s: float = 10.0) -> None:
    """Until the executor has released every block (frees happen on its thread)."""
    deadline = time.monotonic() + timeout_s
    while ex.get_kv_cache_stats().used_num_blocks and time.monotonic() < deadline:
        time.sleep(0.01)


def hf_reference(model, tokens: list[int], n: int) -> list[int]:
    """transformers greedy continuation with no end token handling (our requests have no
    end_id); unlike generate(min_new_tokens=...), eos is not suppressed."""
    ids = list(tokens)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(tokens):]
