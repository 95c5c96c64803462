"""The CPU linears' oneDNN path: row counts run at a few bucketed sizes (so oneDNN
compiles few primitives) with the same results, and its primitive caches are bounded."""

from __future__ import annotations

import os

import pytest
import torch

from llmserve.llm.engine import linear
from llmserve.llm.engine.linear import Linears, bucket_rows

needs_onednn = pytest.mark.skipif(
    not Linears(torch.device("cpu"), torch.float32).packed, reason="no oneDNN linears")


def test_bucket_rows_exact_below_16_then_at_most_an_eighth_more():
    assert [bucket_rows(m) for m in range(1, 16)] == list(range(1, 16))
    sizes = set()
    for rows in range(1, 8193):
        padded = bucket_rows(rows)
        assert rows <= padded <= rows * 9 / 8
        sizes.add(padded)
    assert len(sizes) == 88
    assert [bucket_rows(m) for m in (16, 17, 33, 100, 129, 1000)] == [16, 18, 36, 104, 144, 1024]


@needs_onednn
@pytest.mark.parametrize("rows", [1, 2, 15, 17, 37, 100, 300])
@pytest.mark.parametrize("in_f,out_f", [(64, 96), (512, 640)])  # dual (small) and packed
def test_padded_linear_matches_f_linear(rows, in_f, out_f):
    torch.manual_seed(rows)
    weight, bias = torch.randn(out_f, in_f), torch.randn(out_f)
    linears = Linears(torch.device("cpu"), torch.float32)
    packed = linears.pack(weight)
    x = torch.randn(rows, in_f)
    out = linears.fn(x, packed, bias)
    assert out.shape == (rows, out_f) and out.is_contiguous()
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight, bias),
                               rtol=1e-4, atol=1e-4)


def test_cache_bounds_are_defaults_the_user_may_override(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "64")
    linear.bound_onednn_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(linear.ONEDNN_CACHE_CAPACITY)
    assert os.environ["LRU_CACHE_CAPACITY"] == "64"
