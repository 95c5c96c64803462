"""One-row linears (batch-1 decode) over a whole model's weights, so that they stream
through the cache as in a real forward: MKL's F.linear against oneDNN's prepacked
linear, and the mix the engine uses (dense at most 2^17 elements). Demo-model shapes by
default (6 layers of q/k/v 512x256, o 256x256, gate/up 1376x256, down 256x688, plus the
4096x256 head).

    .venv/bin/python scripts/bench/linear_gemv.py [THREADS]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [(512, 256), (256, 256), (1376, 256), (256, 688)] * 6 + [(4096, 256)]


def bench(fn, n: int = 300) -> float:
    for _ in range(20):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    weights = [torch.randn(n, k) for n, k in SHAPES]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
    xs = {k: torch.randn(1, k) for _, k in SHAPES}

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

    megabytes = sum(w.numel() for w in weights) * 4 / 1e6
    for name, fn in (("MKL F.linear", dense_all), ("oneDNN", onednn_all),
                     ("mixed (engine)", mixed)):
        us = bench(fn)
        print(f"{name:15s} {us:7.0f} us per forward's linears ({megabytes / us * 1e3:.0f} GB/s)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
