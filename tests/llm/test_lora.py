"""LoRA through the executor: greedy output equals transformers on the PEFT-merged
model, mixed adapter batches in one forward equal solo runs, the two-level cache
(eviction, pins, unknown task ids, prefetch) and KV block reuse keyed by the task id."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from executor_helpers import collect, greedy_request, hf_reference, prompt, run, tokens_of
from lora_fixtures import lora_tensors, make_peft_adapter, merged_model

from llmserve.core.errors import InvalidArgument, Unavailable
from llmserve.llm import Executor, ExecutorConfig, LoraConfig, ModelType, PeftCacheConfig
from llmserve.llm.engine.lora import LoraModule
from llmserve.llm.lora_cache import LoraCache


@pytest.fixture(scope="module")
def adapters(exec_ckpt, tmp_path_factory):
    """Two adapters on every Llama module (ranks 4 and 2) as (weights, config) tensors
    and their merged transformers references."""
    base = tmp_path_factory.mktemp("lora")
    a = make_peft_adapter(exec_ckpt, base / "a", seed=1, r=4, alpha=8)
    b = make_peft_adapter(exec_ckpt, base / "b", seed=2, r=2, alpha=4, use_rslora=True)
    out = {}
    for name, folder in (("a", a), ("b", b)):
        w, c = lora_tensors(folder)
        out[name] = (torch.from_numpy(w), torch.from_numpy(c), merged_model(exec_ckpt, folder))
    return out


def lora(adapters, name: str, task_id: int, with_weights: bool = True) -> LoraConfig:
    w, c, _ = adapters[name]
    return LoraConfig(task_id, w if with_weights else None, c if with_weights else None)


class RecordingRunner:
    """The shared runner, recording the LoRA task ids of each forward's chunks."""

    def __init__(self, runner):
        self._runner = runner
        self.steps: list[list[int | None]] = []

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def forward(self, chunks):
        self.steps.append([c.lora_task_id for c in chunks])
        return self._runner.forward(chunks)


def test_greedy_matches_peft_merged_model(make_executor, adapters, exec_hf):
    ex = make_executor()
    p = prompt(12, 1)
    (with_a,) = run(ex, [greedy_request(p, 10, lora_config=lora(adapters, "a", 1))])
    assert tokens_of(with_a) == hf_reference(adapters["a"][2], p, 10)
    assert tokens_of(with_a) != hf_reference(exec_hf, p, 10)  # the adapter changes the output
    # later requests send the task id only; rsLoRA scaling is folded by the converter
    (again,) = run(ex, [greedy_request(p, 10, lora_config=lora(adapters, "a", 1, False))])
    assert tokens_of(again) == tokens_of(with_a)
    (with_b,) = run(ex, [greedy_request(p, 10, lora_config=lora(adapters, "b", 2))])
    assert tokens_of(with_b) == hf_reference(adapters["b"][2], p, 10)
    assert ex.lora_cache.stats().num_pins == 0


def test_mixed_batch_in_one_forward_equals_solo_runs(exec_ckpt, exec_runner, adapters, exec_hf):
    runner = RecordingRunner(exec_runner)
    cfg = ExecutorConfig(tokens_per_block=8)
    cfg.kv_cache_config.max_tokens = 2048
    prompts = [prompt(9, 10), prompt(14, 11), prompt(7, 12), prompt(11, 13)]
    loras = [lora(adapters, "a", 1), lora(adapters, "b", 2), None, lora(adapters, "a", 1)]
    refs = [adapters["a"][2], adapters["b"][2], exec_hf, adapters["a"][2]]
    with Executor(exec_ckpt, ModelType.DECODER_ONLY, cfg, runner=runner) as ex:
        reqs = [greedy_request(p, 8, lora_config=lc) for p, lc in zip(prompts, loras, strict=True)]
        got = run(ex, reqs)
        for p, ref, responses in zip(prompts, refs, got, strict=True):
            assert tokens_of(responses) == hf_reference(ref, p, 8)
        assert any(set(step) == {1, 2, None} and len(step) == 4 for step in runner.steps)
        for i in range(3):  # each alone gives the same tokens as in the mixed batch
            (solo,) = run(ex, [greedy_request(prompts[i], 8, lora_config=loras[i])])
            assert tokens_of(solo) == tokens_of(got[i])


def test_fused_qkv_module_equals_separate_q_k_v(make_executor, adapters):
    w, c, merged = adapters["a"]
    arch = make_executor().runner.arch
    h, r = arch.hidden_size, 4
    rows_w, rows_c = [], []
    for layer in range(arch.num_layers):
        a_parts, b_parts = [], []
        for module in (LoraModule.ATTN_Q, LoraModule.ATTN_K, LoraModule.ATTN_V):
            i = next(j for j, row in enumerate(c.tolist()) if row[:2] == [module, layer])
            out = arch.q_size if module == LoraModule.ATTN_Q else arch.kv_size
            a_parts.append(w[i, : r * h].view(r, h))
            b_parts.append(w[i, r * h : r * h + out * r].view(out, r))
        a = torch.cat(a_parts)  # [3r, hidden]
        b = torch.block_diag(*b_parts)  # [q + 2kv, 3r]
        rows_w.append(torch.cat([a.reshape(-1), b.reshape(-1)]))
        rows_c.append([LoraModule.ATTN_QKV, layer, 3 * r])
    keep = [i for i, row in enumerate(c.tolist()) if row[0] > LoraModule.ATTN_V]
    rows_w += [w[i] for i in keep]
    rows_c += [c[i].tolist() for i in keep]
    width = max(x.numel() for x in rows_w)
    fused_w = torch.stack([torch.nn.functional.pad(x, (0, width - x.numel())) for x in rows_w])
    fused_c = torch.tensor(rows_c, dtype=torch.int32)
    ex = make_executor()
    p = prompt(10, 3)
    (fused,) = run(ex, [greedy_request(p, 8, lora_config=LoraConfig(3, fused_w, fused_c))])
    assert tokens_of(fused) == hf_reference(merged, p, 8)


def test_unknown_task_and_bad_tensors_are_rejected(make_executor, adapters):
    ex = make_executor(lora_config=PeftCacheConfig(max_adapter_size=2))
    p = prompt(6, 4)
    with pytest.raises(InvalidArgument,
                       match="LoRA task 99 not found in cache. Please send LoRA weights"):
        ex.enqueue_request(greedy_request(p, 4, lora_config=LoraConfig(99)))
    w, c, _ = adapters["a"]
    with pytest.raises(InvalidArgument, match="adapter size 4 exceeds lora_cache_max_adapter"):
        ex.enqueue_request(greedy_request(p, 4, lora_config=LoraConfig(1, w, c)))
    wb, cb, _ = adapters["b"]
    bad = cb.clone()
    bad[0, 0] = 16
    cases = {
        "must have both": LoraConfig(2, wb, None),
        "module id 16 is not supported": LoraConfig(2, wb, bad),
        "layer 7 is out of range": LoraConfig(2, wb[:1], torch.tensor([[1, 7, 2]])),
        "needs 2 x 64 \\+ 64 x 2 = 256": LoraConfig(2, wb[:1, :100], cb[:1]),
        "shape": LoraConfig(2, wb, cb[:, :2]),
    }
    for message, lc in cases.items():
        with pytest.raises(InvalidArgument, match=message):
            ex.enqueue_request(greedy_request(p, 4, lora_config=lc))
    assert ex.lora_cache.stats().num_host_tasks == 0
    (ok,) = run(ex, [greedy_request(p, 4, lora_config=LoraConfig(2, wb, cb))])
    assert len(tokens_of(ok)) == 4


def _page_bytes(runner, config: PeftCacheConfig) -> int:
    return LoraCache(runner.arch, config, dtype=runner.arch.dtype).page_bytes


def test_lru_eviction_and_pins(make_executor, exec_runner, adapters):
    pages = PeftCacheConfig()
    pages.host_cache_size = 2 * _page_bytes(exec_runner, pages)  # each adapter: 1 page
    ex = make_executor(lora_config=pages)
    p = prompt(8, 5)
    for task in (1, 2):
        run(ex, [greedy_request(p, 2, lora_config=lora(adapters, "a", task))])
    run(ex, [greedy_request(p, 2, lora_config=lora(adapters, "a", 1, False))])  # 1 most recent
    run(ex, [greedy_request(p, 2, lora_config=lora(adapters, "b", 3))])  # evicts task 2
    assert ex.lora_cache.has_task(1) and ex.lora_cache.has_task(3)
    with pytest.raises(InvalidArgument, match="LoRA task 2 not found in cache"):
        ex.enqueue_request(greedy_request(p, 2, lora_config=lora(adapters, "a", 2, False)))

    # tasks 1 and 3 held by long streaming requests: a new adapter finds no room
    held = [ex.enqueue_request(greedy_request(p, 200, streaming=True,
                                              lora_config=lora(adapters, n, t, False)))
            for n, t in (("a", 1), ("b", 3))]
    assert ex.lora_cache.stats().num_pinned_tasks == 2
    with pytest.raises(Unavailable, match="LoRA host cache is full"):
        ex.enqueue_request(greedy_request(p, 2, lora_config=lora(adapters, "a", 4)))
    for rid in held:
        ex.cancel_request(rid)
    collect(ex, held)
    stats = ex.lora_cache.stats()
    assert (stats.num_pins, stats.num_pinned_tasks, stats.num_host_tasks) == (0, 0, 2)
    (ok,) = run(ex, [greedy_request(p, 3, lora_config=lora(adapters, "a", 4))])
    assert tokens_of(ok) == hf_reference(adapters["a"][2], p, 3)


def test_two_level_cache_loads_and_evicts_device_pages(exec_runner, adapters):
    arch = exec_runner.arch
    config = PeftCacheConfig()
    page = _page_bytes(exec_runner, config)
    cache = LoraCache(arch, config, dtype=arch.dtype, device="cpu", device_bytes=page)
    for task, name in ((1, "a"), (2, "b")):
        w, c, _ = adapters[name]
        cache.put(task, w, c)
    def check(adapter, name, rank):
        w, c, _ = adapters[name]
        down = adapter.layers[1]["down"][0]
        i = c.tolist().index([LoraModule.MLP_4H_TO_H, 1, rank])
        n_a = down.a.numel()
        assert torch.equal(down.a.reshape(-1), w[i, :n_a])
        assert torch.equal(down.b.reshape(-1), w[i, n_a : n_a + down.b.numel()])

    check(cache.adapters([1])[1], "a", 4)
    stats = cache.stats()
    assert (stats.device_pages_total, stats.device_pages_used, stats.num_device_tasks) == (1, 1, 1)
    assert stats.host_pages_used == 2
    check(cache.adapters([2])[2], "b", 2)  # evicts task 1 from the device level only
    assert cache.has_task(1) and cache.stats().num_device_tasks == 1
    check(cache.adapters([1])[1], "a", 4)  # reloaded from its host pages
    with pytest.raises(Unavailable, match="LoRA device cache is full"):
        cache.adapters([1, 2])  # one step's adapters must fit together


def test_kv_block_reuse_is_keyed_by_task_id(make_executor, adapters, exec_hf):
    ex = make_executor(reuse=True)
    p = prompt(30, 6)  # 3 full blocks of 8 are reusable
    order = [("a", 1), (None, None), ("a", 1), ("b", 2)]
    for name, task in order:
        lc = None if name is None else lora(adapters, name, task)
        (got,) = run(ex, [greedy_request(p, 5, lora_config=lc)])
        ref = exec_hf if name is None else adapters[name][2]
        assert tokens_of(got) == hf_reference(ref, p, 5)
    assert ex.block_manager.total_reused >= 3  # the second task-1 request reused its prefix


def test_prefetch_dir_loads_adapters_at_start(make_executor, adapters, tmp_path):
    for task, name in ((7, "a"), (8, "b")):
        w, c, _ = adapters[name]
        (tmp_path / str(task)).mkdir()
        np.save(tmp_path / str(task) / "model.lora_weights.npy", w.numpy()[None])
        np.save(tmp_path / str(task) / "model.lora_config.npy", c.numpy()[None])
    ex = make_executor(lora_config=PeftCacheConfig(lora_prefetch_dir=str(tmp_path)))
    assert ex.lora_cache.has_task(7) and ex.lora_cache.has_task(8)
    p = prompt(9, 7)
    (got,) = run(ex, [greedy_request(p, 6, lora_config=LoraConfig(8))])
    assert tokens_of(got) == hf_reference(adapters["b"][2], p, 6)
