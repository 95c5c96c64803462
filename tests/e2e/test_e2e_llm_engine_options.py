"""KV cache and p-tuning options of a served tensorrt_llm model, through tritonclient over
real sockets: max_attention_window_size (greedy output of transformers with the same
sliding window, for sequences longer than the KV cache), kv_cache_host_memory_bytes
(evicted prefix blocks come back from host memory and count as reused) and
prompt_embedding_table / prompt_table_extra_ids (transformers with inputs_embeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options
from llm_e2e_helpers import _copy_model, fill
from llm_fixtures import make_tiny_checkpoint
from tritonclient.utils import np_to_triton_dtype

BLOCK = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    base = tmp_path_factory.mktemp("engine_options")
    ckpt = make_tiny_checkpoint(base / "ckpt", "mistral")
    values = fill.model_values(ckpt, decoupled=False, max_batch_size=4)["tensorrt_llm"]
    values.update(engine_kv_block_size=str(BLOCK), engine_max_num_tokens="16",
                  max_tokens_in_paged_kv_cache="64", enable_kv_cache_reuse="false")
    repo = base / "repo"
    _copy_model(repo, "tensorrt_llm", "window_llm",
                dict(values, max_attention_window_size="12"),
                {'name: "tensorrt_llm"': 'name: "window_llm"'})
    per_block = 2 * 2 * BLOCK * 2 * 16 * 4  # layers, K+V, tokens, kv heads, head dim, fp32
    _copy_model(repo, "tensorrt_llm", "host_llm",
                dict(values, max_tokens_in_paged_kv_cache="40", enable_kv_cache_reuse="true",
                     kv_cache_host_memory_bytes=str(16 * per_block)),
                {'name: "tensorrt_llm"': 'name: "host_llm"'})
    live = LiveServer(e2e_options(model_repositories=[repo]))
    client = th.InferenceServerClient(live.http_url)
    plain = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    windowed = AutoModelForCausalLM.from_pretrained(str(ckpt), sliding_window=12).eval()
    yield client, plain, windowed
    client.close()
    live.stop()


def _infer(client, model: str, ids: list[int], n: int, **extra) -> tuple[list[int], int]:
    values = {"input_ids": np.array([ids], np.int32),
              "input_lengths": np.array([[len(ids)]], np.int32),
              "request_output_len": np.array([[n]], np.int32),
              "return_kv_cache_reuse_stats": np.array([[True]])}
    values.update(extra)
    inputs = []
    for name, value in values.items():
        tensor = th.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    return (result.as_numpy("output_ids")[0, 0].tolist(),
            int(result.as_numpy("kv_cache_reused_blocks").reshape(-1)[0]))


def _greedy(model, ids: list[int], n: int, table: torch.Tensor | None = None) -> list[int]:
    embed = model.get_input_embeddings().weight
    seq = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            rows = [embed[t] if t < embed.shape[0] else table[t - embed.shape[0]] for t in seq]
            logits = model(inputs_embeds=torch.stack(rows)[None]).logits[0, -1]
            seq.append(int(logits.argmax()))
    return seq[len(ids):]


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(4, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_attention_window_serves_sequences_longer_than_the_cache(served):
    client, _, windowed = served
    prompt = _ids(30, 1)  # 30 + 50 tokens, in a KV cache of 64
    out, _ = _infer(client, "window_llm", prompt, 50)
    assert out == _greedy(windowed, prompt, 50)


def test_host_tier_brings_evicted_prefix_back(served):
    client, plain, _ = served
    first, other = _ids(24, 2), _ids(28, 3)
    out, reused = _infer(client, "host_llm", first, 4)
    assert reused == 0 and out == _greedy(plain, first, 4)
    _infer(client, "host_llm", other, 8)  # 9 of the 10 device blocks: evicts the first
    again, reused = _infer(client, "host_llm", first, 4)
    assert again == out and reused == 5


def test_prompt_table_through_the_tensorrt_llm_model(served):
    client, plain, _ = served
    vocab, hidden = plain.config.vocab_size, plain.config.hidden_size
    gen = torch.Generator().manual_seed(4)
    tables = [(torch.randn(4, hidden, generator=gen) * 0.3).half() for _ in range(2)]
    ids = [vocab + i for i in range(4)] + _ids(16, 5)
    outs = []
    for extra_id, table in zip((1, 2), tables, strict=True):
        extra = np.array([[extra_id] * 4 + [0] * 16], np.uint64)
        out, reused = _infer(client, "host_llm", ids, 6,
                             prompt_embedding_table=table.numpy()[None],
                             prompt_vocab_size=np.array([[4]], np.int32),
                             prompt_table_extra_ids=extra)
        assert reused == 0  # same ids, other extra id: nothing shared
        assert out == _greedy(plain, ids, 6, tables[extra_id - 1].float())
        outs.append(out)
    assert outs[0] != outs[1]
