"""The C kernels registered as torch ops (torch.ops.llmserve.*): they pass torch's
opcheck (schema, fake implementation, autograd registration), run inside a
torch.compile graph with no graph break, and reject tensors of the wrong kind with a
ValueError instead of handing the kernel a bad pointer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import llmserve.llm.engine  # noqa: F401  (registers the ops)
from llmserve.llm.engine.cpu_kernels import kernels

pytestmark = pytest.mark.skipif(kernels() is None, reason="no C compiler for the CPU kernels")

ops = torch.ops.llmserve


def _decode_args():
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(16, 4, 2, 8, generator=gen), torch.randn(16, 4, 2, 8, generator=gen)
    q = torch.randn(2, 4, 8, generator=gen)
    return q, k, v, torch.tensor([[3, 5], [1, 0]]), torch.tensor([6, 3]), 0.3, 0


def _prefill_args():
    gen = torch.Generator().manual_seed(1)
    k, v = torch.randn(16, 4, 2, 8, generator=gen), torch.randn(16, 4, 2, 8, generator=gen)
    q = torch.randn(7, 4, 8, generator=gen)
    # a 5-token chunk after 3 cached keys (rows 0-4), a fresh 2-token one (rows 5-6)
    return (q, k, v, torch.tensor([[3, 5], [1, 0]]), torch.tensor([3, 0]),
            torch.tensor([5, 2]), torch.tensor([0, 5]), 0.3, 0)


def test_opcheck_every_op():
    torch.library.opcheck(ops.paged_decode.default, _decode_args())
    torch.library.opcheck(ops.paged_prefill.default, _prefill_args())
    torch.library.opcheck(ops.paged_prefill.default, (*_prefill_args()[:-1], 4, 1))  # sinks
    torch.library.opcheck(ops.paged_decode.default, (*_decode_args()[:-1], 5, 2))  # sinks
    x, w, d = torch.randn(3, 16), torch.randn(16), torch.randn(3, 16)
    torch.library.opcheck(ops.rms_norm.default, (x.clone(), w, 1e-6, d))
    torch.library.opcheck(ops.rms_norm.default, (x.clone(), w, 1e-6, None))
    torch.library.opcheck(ops.silu_mul.default, (torch.randn(3, 32),))
    qk = torch.randn(3, 40)[:, :32].view(3, 4, 8)  # a column slice, as in the model
    cs = torch.randn(3, 8)
    torch.library.opcheck(ops.rope.default, (qk, cs, cs))


def test_ops_compose_with_torch_compile():
    def block(q, k, v, tables, lens, x, w, delta):
        attn = ops.paged_decode(q, k, v, tables, lens, 0.3, 0)
        normed = ops.rms_norm(x, w, 1e-6, delta)  # x += delta in place
        return attn, ops.silu_mul(torch.cat([normed, normed], dim=1))

    q, k, v, tables, lens, _, _ = _decode_args()
    x, w, delta = torch.randn(2, 8), torch.randn(8), torch.randn(2, 8)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    x_eager, x_compiled = x.clone(), x.clone()
    expected = block(q, k, v, tables, lens, x_eager, w, delta)
    got = compiled(q, k, v, tables, lens, x_compiled, w, delta)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(x_compiled, x + delta)  # the mutation survives compilation
    normed = F.rms_norm(x + delta, (8,), w, 1e-6)
    torch.testing.assert_close(expected[1], F.silu(normed) * normed)


def test_ops_reject_tensors_of_the_wrong_kind():
    q, k, v, tables, lens, scale, window = _decode_args()
    bad_decode = {
        "bf16 query": (q.bfloat16(), k, v, tables, lens),
        "caches differ": (q, k, v[:8], tables, lens),
        "head size": (q[..., :4], k, v, tables, lens),
        "int32 tables": (q, k, v, tables.int(), lens),
        "lengths for 3": (q, k, v, tables, torch.tensor([1, 1, 1])),
    }
    for case, args in bad_decode.items():
        with pytest.raises(ValueError, match="llmserve::paged_decode"):
            ops.paged_decode(*args, scale, window)
            pytest.fail(case)
    with pytest.raises(IndexError, match="block id"):
        ops.paged_decode(q, k, v, torch.tensor([[3, 16], [1, 0]]), lens, scale, window)
    q, k, v, tables, starts, lens, rows, scale, window = _prefill_args()
    bad_prefill = {
        "float64 cache": (q, k.double(), v.double(), tables, starts, lens, rows),
        "one start too many": (q, k, v, tables, torch.tensor([3, 0, 0]), lens, rows),
        "int32 rows": (q, k, v, tables, starts, lens, rows.int()),
        "a flat table": (q, k, v, tables.flatten(), starts, lens, rows),
    }
    for case, args in bad_prefill.items():
        with pytest.raises(ValueError, match="llmserve::paged_prefill"):
            ops.paged_prefill(*args, scale, window)
            pytest.fail(case)
    with pytest.raises(IndexError, match="block id"):
        ops.paged_prefill(q, k, v, torch.tensor([[3, 5], [16, 0]]), starts, lens, rows,
                          scale, window)
    with pytest.raises(IndexError, match="rows outside q"):
        ops.paged_prefill(q, k, v, tables, starts, lens, torch.tensor([0, 6]), scale, window)
    with pytest.raises(ValueError, match="llmserve::rms_norm"):
        ops.rms_norm(torch.randn(3, 16), torch.randn(8), 1e-6)
    with pytest.raises(ValueError, match="llmserve::rms_norm"):
        ops.rms_norm(torch.randn(16, 3).t(), torch.randn(16), 1e-6)  # updated in place
    with pytest.raises(ValueError, match="llmserve::silu_mul"):
        ops.silu_mul(torch.randn(3, 31))
    with pytest.raises(ValueError, match="llmserve::rope"):
        ops.rope(torch.randn(3, 4, 8, dtype=torch.float64), torch.randn(3, 8), torch.randn(3, 8))


def test_ops_accept_layouts_the_kernels_do_not():
    # non-contiguous inputs are copied at the boundary, not rejected
    q, k, v, tables, lens, scale, window = _decode_args()
    wide = torch.randn(2, 4, 16)[..., ::2]  # a head-dim stride of 2
    torch.testing.assert_close(ops.paged_decode(wide, k, v, tables, lens, scale, window),
                               ops.paged_decode(wide.contiguous(), k, v, tables, lens, scale,
                                                window))
    x = torch.randn(3, 4, 8).transpose(0, 1).contiguous().transpose(0, 1)
    cs = torch.randn(3, 8)
    torch.testing.assert_close(ops.rope(x, cs, cs), ops.rope(x.contiguous(), cs, cs))
