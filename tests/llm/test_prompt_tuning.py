"""p-tuning (PromptTuningConfig): prompt ids at or past the vocabulary embed as rows of
the request's table, as transformers gives with inputs_embeds; with block reuse, the
extra ids keep requests with the same ids but different tables from sharing blocks."""

from __future__ import annotations

import pytest
import torch
from executor_helpers import collect, greedy_request, prompt, tokens_of

from llmserve.core.errors import InvalidArgument
from llmserve.llm import OutputConfig, PromptTuningConfig, SamplingConfig


def _table(seed: int, rows: int = 5, hidden: int = 64) -> torch.Tensor:
    return torch.randn(rows, hidden, generator=torch.Generator().manual_seed(seed)) * 0.3


def _reference(model, ids: list[int], table: torch.Tensor, n: int) -> list[int]:
    """transformers greedy with inputs_embeds: fake ids take their table row."""
    embed = model.get_input_embeddings().weight
    vocab = embed.shape[0]
    seq = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            rows = [table[t - vocab] if t >= vocab else embed[t] for t in seq]
            logits = model(inputs_embeds=torch.stack(rows)[None]).logits[0, -1]
            seq.append(int(logits.argmax()))
    return seq[len(ids):]


def _run(ex, ids, table, extra, n=8, **kw):
    oc = OutputConfig(exclude_input_from_output=True, return_perf_metrics=True)
    req = greedy_request(ids, n, output_config=oc,
                         prompt_tuning_config=PromptTuningConfig(table, extra), **kw)
    (rid,) = ex.enqueue_requests([req])
    responses = collect(ex, [rid])[rid]
    reused = responses[-1].result.request_perf_metrics.kv_cache_metrics.num_reused_blocks
    return tokens_of(responses), reused


def test_prompt_table_rows_replace_fake_ids_and_extra_ids_split_reuse(make_executor, exec_hf):
    vocab = exec_hf.config.vocab_size
    ids = [vocab + i for i in range(5)] + prompt(20, 5)  # 25 tokens: 3 full blocks of 8
    fake = [1] * 5 + [0] * 20
    one, two = _table(1), _table(2)
    ex = make_executor(reuse=True)
    out_one, reused = _run(ex, ids, one, fake)
    assert reused == 0 and out_one == _reference(exec_hf, ids, one, 8)
    # same ids, another table with another extra id: no block of the first is shared
    out_two, reused = _run(ex, ids, two, [2] * 5 + [0] * 20)
    assert reused == 0 and out_two == _reference(exec_hf, ids, two, 8)
    assert out_two != out_one
    # the first table again, under its extra id: its blocks are reused
    again, reused = _run(ex, ids, one, fake)
    assert reused == 3 and again == out_one
    # sampling penalties look at the prompt's ids: fake ones have no logit to penalise
    penalised, _ = _run(ex, ids, one.half(), None,
                        sampling_config=SamplingConfig(repetition_penalty=1.3))
    assert len(penalised) == 8


@pytest.mark.parametrize("change,message", [
    (dict(ids_past=5), "input_token_ids must be in"),
    (dict(table=torch.zeros(5, 32)), "must have shape"),
    (dict(extra=[1, 1]), "prompt_table_extra_ids has 2 values"),
    (dict(no_table=True), "input_token_ids must be in"),
])
def test_bad_prompt_tuning_requests_are_rejected(make_executor, exec_hf, change, message):
    vocab = exec_hf.config.vocab_size
    ids = [vocab + change.get("ids_past", 0), 7, 8]
    config = PromptTuningConfig(change.get("table", _table(3)), change.get("extra"))
    req = greedy_request(ids, 2, prompt_tuning_config=None if "no_table" in change
                         else config)
    with pytest.raises(InvalidArgument, match=message):
        make_executor().enqueue_request(req)
