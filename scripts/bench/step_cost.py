"""Where one engine step's time goes, against what the machine can do: the ModelRunner's
forward at the shapes of a 32-stream load (32 decode tokens at contexts 130-200, two
128-token prefills, and a mixed step of 24 decodes and 232 prefill tokens), the matrix
products of those shapes in float32 and bfloat16 (GFLOP/s; torch's default GEMM and the
engine's prepacked oneDNN one), prefill attention (SDPA and the paged prefill kernel), the
paged decode kernel's read rate over KV blocks laid out in order and scattered, and a
plain read of 64 MiB (the memory's rate on one thread). One thread unless THREADS says otherwise; run it alone.

    .venv/bin/python scripts/bench/step_cost.py [MODEL] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def best_ms(fn: Callable[[], object], n: int, rounds: int = 3) -> float:
    for _ in range(max(2, n // 10)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e3)
    return best


def forward_costs(model: str) -> None:
    from llmserve.llm.engine.attention import SeqChunk
    from llmserve.llm.engine.runner import ModelRunner

    runner = ModelRunner(model)
    runner.allocate_kv_cache(2048, 32)
    rng = random.Random(0)
    vocab = runner.arch.vocab_size
    blocks = iter(range(2048))

    def chunk(tokens: int, start: int) -> SeqChunk:
        table = [next(blocks) for _ in range((start + tokens + 31) // 32)]
        return SeqChunk([rng.randrange(vocab) for _ in range(tokens)], start, table)

    decode = [chunk(1, rng.randrange(130, 200)) for _ in range(32)]
    prefill = [chunk(128, 0) for _ in range(2)]
    mixed = decode[:24] + [chunk(128, 0), chunk(104, 0)]
    for name, chunks in (("decode 32", decode), ("prefill 2 x 128", prefill),
                         ("24 decodes + 232 prefill", mixed)):
        print(f"forward, {name}: {best_ms(lambda c=chunks: runner.forward(c), 30):.2f} ms")


def gemm_rates(hidden: int, qkv: int, gate_up: int, inter: int) -> None:
    """torch's default GEMM (F.linear: MKL's sgemm on x86) and the engine's own path
    (engine/linear.py: oneDNN on weights prepacked at load), float32 and bfloat16."""
    from llmserve.llm.engine.linear import Linears

    engines = {dtype: Linears(torch.device("cpu"), dtype)
               for dtype in (torch.float32, torch.bfloat16)}
    for rows in (32, 256):
        for out_f, in_f in ((qkv, hidden), (gate_up, hidden), (hidden, inter)):
            x, w = torch.randn(rows, in_f), torch.randn(out_f, in_f)
            flop = 2 * rows * in_f * out_f
            rates = []
            for dtype, eng in engines.items():
                xd, wd = x.to(dtype), w.to(dtype)
                packed = eng.pack(wd)
                plain = best_ms(lambda a=xd, b=wd: F.linear(a, b), 200)
                ours = best_ms(lambda a=xd, b=packed, f=eng.fn: f(a, b, None), 200)
                rates.append(f"{dtype} F.linear {flop / plain / 1e6:.0f}, "
                             f"engine {flop / ours / 1e6:.0f}")
            print(f"linear [{rows} x {in_f}] x [{in_f} x {out_f}], GFLOP/s: "
                  + "; ".join(rates))


def prefill_attention_rates(kv_heads: int, heads: int, head_dim: int) -> None:
    """One sequence's causal prefill attention, one layer: torch's SDPA (flash attention
    for CPU) on the new keys against the paged prefill kernel reading the cache."""
    from llmserve.llm.engine.cpu_kernels import kernels

    if kernels() is None:
        print("paged prefill kernel: not available (no C compiler)")
        return
    for n in (128, 512):
        sdpa, kernel = _prefill_case(n, kv_heads, heads, head_dim)
        flop = 4 * heads * head_dim * n * (n + 1) / 2
        print(f"prefill attention, {n} tokens, one layer: SDPA {sdpa * 1e3:.0f} us, "
              f"paged prefill kernel {kernel * 1e3:.0f} us ({flop / kernel / 1e6:.0f} GFLOP/s)")


def _prefill_case(n: int, kv_heads: int, heads: int, head_dim: int) -> tuple[float, float]:
    from llmserve.llm.engine.cpu_kernels import paged_prefill

    bs, scale = 32, head_dim**-0.5
    blocks = n // bs
    k = torch.randn(blocks + 4, bs, kv_heads, head_dim)
    v = torch.randn(blocks + 4, bs, kv_heads, head_dim)
    table = torch.arange(2, 2 + blocks)[None].contiguous()
    q, out = torch.randn(n, heads, head_dim), torch.empty(n, heads, head_dim)
    kn, vn = (c[2 : 2 + blocks].reshape(n, kv_heads, head_dim).transpose(0, 1)[None]
              for c in (k, v))
    qs = q.transpose(0, 1)[None]
    zero, length = torch.tensor([0]), torch.tensor([n])
    sdpa = best_ms(lambda: F.scaled_dot_product_attention(
        qs, kn, vn, is_causal=True, scale=scale, enable_gqa=True), 50)
    kernel = best_ms(lambda: paged_prefill(out, q, k, v, table, zero, length, zero, scale,
                                           None), 50)
    return sdpa, kernel


def decode_kernel_rates(layers: int, kv_heads: int, heads: int, head_dim: int) -> None:
    from llmserve.llm.engine.cpu_kernels import kernels, paged_decode

    if kernels() is None:
        print("paged decode kernel: not available (no C compiler)")
        return
    batch, blocks_each, bs, num_blocks = 32, 8, 32, 2048
    k = [torch.randn(num_blocks, bs, kv_heads, head_dim) for _ in range(layers)]
    v = [torch.randn(num_blocks, bs, kv_heads, head_dim) for _ in range(layers)]
    q = torch.randn(batch, heads, head_dim)
    rng = random.Random(0)
    lens = torch.tensor([rng.randrange(130, 200) for _ in range(batch)], dtype=torch.int64)
    read = layers * int(lens.sum()) * kv_heads * head_dim * 4 * 2
    scattered = list(range(num_blocks))
    rng.shuffle(scattered)
    for name, ids in (("blocks in order", list(range(num_blocks))),
                      ("blocks scattered", scattered)):
        tables = torch.tensor(ids[:batch * blocks_each]).view(batch, blocks_each)

        def every_layer(t=tables):
            for layer in range(layers):
                paged_decode(q, k[layer], v[layer], t, lens, head_dim ** -0.5, None, 0)

        ms = best_ms(every_layer, 30)
        print(f"paged decode, 32 sequences x {layers} layers, {name}: {ms:.2f} ms, "
              f"{read / ms / 1e6:.1f} GB/s of KV read")
    big = torch.randn(16 * 2**20)
    ms = best_ms(big.sum, 20)
    print(f"reading 64 MiB (sum): {big.numel() * 4 / ms / 1e6:.1f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/demo-llm")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from llmserve.llm.engine.config import load_arch_config

    arch = load_arch_config(args.model)
    kv = arch.num_kv_heads * arch.head_dim
    with torch.inference_mode():
        forward_costs(args.model)
        gemm_rates(arch.hidden_size, arch.num_heads * arch.head_dim + 2 * kv,
                   2 * arch.intermediate_size, arch.intermediate_size)
        prefill_attention_rates(arch.num_kv_heads, arch.num_heads, arch.head_dim)
        decode_kernel_rates(arch.num_layers, arch.num_kv_heads, arch.num_heads, arch.head_dim)


if __name__ == "__main__":
    main()
