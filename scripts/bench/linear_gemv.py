"""One-row linears (batch-1 decode) over a whole model's weights, so that they stream
through the cache as in a real forward: MKL's F.linear against oneDNN's prepacked
linear, the mix the engine uses (dense at most 2^17 elements), and the weight-only
formats of engine/quant.py (bf16 weights through oneDNN, int8 through torch's
_weight_int8pack_mm with bf16 or float32 activations). Demo-model shapes by default (6
layers of q/k/v 512x256, o 256x256, gate/up 1376x256, down 256x688, plus the 4096x256
head); --model 80m takes the random 80M Llama's (12 layers, hidden 768, 4 KV heads of
64, MLP 2048, vocab 4096). Prints wall and CPU time per forward's linears.

    .venv/bin/python scripts/bench/linear_gemv.py [THREADS] [--model demo|80m] [--rows 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = {
    "demo": [(512, 256), (256, 256), (1376, 256), (256, 688)] * 6 + [(4096, 256)],
    "80m": [(1280, 768), (768, 768), (4096, 768), (768, 2048)] * 12 + [(4096, 768)],
}


def bench(fn, n: int) -> tuple[float, float]:
    for _ in range(max(2, n // 10)):
        fn()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def _int8(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    scales = (w.abs().amax(dim=1) / 127).to(dtype)
    return (w / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8), scales


def main(threads: int, model: str, rows: int) -> None:
    torch.set_num_threads(threads)
    shapes = SHAPES[model]
    weights = [torch.randn(n, k) for n, k in shapes]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
    packed_bf16 = [torch.ops.mkldnn._reorder_linear_weight(w.bfloat16(), None) for w in weights]
    int8_bf16 = [_int8(w, torch.bfloat16) for w in weights]
    int8_f32 = [_int8(w, torch.float32) for w in weights]
    xs = {k: torch.randn(rows, k) for _, k in shapes}

    def onednn(x, p):
        return torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")

    def dense_all():
        for w in weights:
            F.linear(xs[w.shape[1]], w)

    def onednn_all():
        for w, p in zip(weights, packed, strict=True):
            onednn(xs[w.shape[1]], p)

    def mixed():
        for w, p in zip(weights, packed, strict=True):
            if w.numel() <= 2**17:
                F.linear(xs[w.shape[1]], w)
            else:
                onednn(xs[w.shape[1]], p)

    def bf16_weights():  # quant.Bf16Weight: float32 in and out
        for w, p in zip(weights, packed_bf16, strict=True):
            onednn(xs[w.shape[1]].bfloat16(), p).float()

    def int8_bf16_act():  # quant.Int8Weight
        for w, (q, s) in zip(weights, int8_bf16, strict=True):
            torch._weight_int8pack_mm(xs[w.shape[1]].bfloat16(), q, s).float()

    def int8_f32_act():
        for w, (q, s) in zip(weights, int8_f32, strict=True):
            torch._weight_int8pack_mm(xs[w.shape[1]], q, s)

    megabytes = sum(w.numel() for w in weights) * 4 / 1e6
    n = 300 if model == "demo" else 40
    print(f"{model} shapes, {rows} row(s), {threads} thread(s), {megabytes:.0f} MB as fp32")
    cases = [("MKL F.linear", dense_all), ("oneDNN", onednn_all), ("mixed (engine)", mixed),
             ("bf16 weights", bf16_weights), ("int8, bf16 act", int8_bf16_act)]
    if rows == 1:  # float32 activations take a scalar path: 6x slower at one row, 30x at 16
        cases.append(("int8, fp32 act", int8_f32_act))
    for name, fn in cases:
        us, cpu_us = bench(fn, n)
        print(f"{name:15s} {us:7.0f} us ({cpu_us:7.0f} us CPU) per forward's linears "
              f"({megabytes / us * 1e3:.0f} GB/s fp32-equivalent)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("threads", nargs="?", type=int, default=2)
    parser.add_argument("--model", choices=sorted(SHAPES), default="demo")
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()
    main(args.threads, args.model, args.rows)
