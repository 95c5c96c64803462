"""CPU kernels written in C (kernels/*.c), compiled on first use with the machine's C
compiler for its own CPU (-O3 -march=native -fopenmp) and called through ctypes.

The shared object links libgomp by soname, so it runs on torch's own OpenMP runtime
(torch's wheel ships libgomp.so.1 and has it loaded already): its parallel regions use
the calling thread's torch thread team. Builds are cached under
$LLMSERVE_KERNEL_CACHE (default ~/.cache/llmserve/kernels), keyed by the source, the
compiler and the CPU. Without a compiler (or with LLMSERVE_CPU_KERNELS=0) the engine
keeps its pure-torch paths and says so once in the log.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_KERNEL_DIR = Path(__file__).with_name("kernels")
_SOURCES = [_KERNEL_DIR / name for name in ("paged_attention.c", "paged_prefill.c", "norm_act.c")]
_HEADERS = [_KERNEL_DIR / name for name in ("paged_common.h", "vector_math.h")]
# No -ffast-math: its -ffinite-math-only makes the softmax's -INFINITY undefined. Of its
# parts the kernels keep the ones that change rounding only: no errno and no FP traps
# (so loops with expf vectorise), fused multiply-adds (-std=c11 alone turns contraction
# off), and reassociation, which lets a dot product keep several partial sums (without
# it the paged decode kernel ran 1.35x slower: 43 against 32 us for 12 heads x 200 keys).
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11",
          "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math",
          "-ffp-contract=fast"]
_ENV_OFF = "LLMSERVE_CPU_KERNELS"
_ENV_CACHE = "LLMSERVE_KERNEL_CACHE"

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return os.uname().machine


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc) or shutil.which("gcc")


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                             check=False).stdout
    texts = [s.read_text() for s in (*_SOURCES, *_HEADERS)]
    key = hashlib.sha256("\0".join([*texts, " ".join(_FLAGS), version,
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get(_ENV_CACHE) or Path.home() / ".cache" / "llmserve" / "kernels")
    target = cache / f"llmserve-kernels-{key}.so"
    if target.is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: build under the temp folder instead
        cache = Path(tempfile.gettempdir()) / f"llmserve-kernels-{os.getuid()}"
        cache.mkdir(parents=True, exist_ok=True)
        target = cache / target.name
        if target.is_file():
            return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / target.name
        proc = subprocess.run([cc, *_FLAGS, *map(str, _SOURCES), "-o", str(built), "-lm"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(built, target)  # atomic: concurrent builders end with one file
    return target


def _load() -> ctypes.CDLL | None:
    if os.environ.get(_ENV_OFF, "1") == "0":
        logger.info("%s=0: CPU kernels off, attention uses the torch path", _ENV_OFF)
        return None
    cc = _compiler()
    if cc is None:
        logger.warning("no C compiler found: CPU decode attention uses the slower torch "
                       "path (install gcc, or set CC)")
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, RuntimeError) as exc:
        logger.warning("CPU kernels unavailable, using the torch path: %s", exc)
        return None
    fn = lib.paged_decode_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [_PTR, _PTR, _I64, _PTR, _PTR, _I64, _PTR, _PTR, _I64, _I64, _I64, _I64,
                   _I64, _I64, ctypes.c_float, _I64, _I64]
    fn = lib.paged_prefill_f32
    fn.restype = ctypes.c_int
    fn.argtypes = [_PTR, _PTR, _I64, _I64, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _I64,
                   _I64, _I64, _I64, _I64, _I64, ctypes.c_float, _I64, _I64]
    lib.rms_norm_f32.restype = None
    lib.rms_norm_f32.argtypes = [_PTR, _PTR, _PTR, _PTR, _I64, _I64, ctypes.c_float]
    lib.silu_mul_f32.restype = None
    lib.silu_mul_f32.argtypes = [_PTR, _PTR, _I64, _I64]
    lib.rope_f32.restype = None
    lib.rope_f32.argtypes = [_PTR, _PTR, _I64, _PTR, _PTR, _I64, _I64, _I64]
    return lib


def kernels() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when unavailable (built once per process)."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            _lib = _load()
            _tried = True
    return _lib


# The engine calls these functions directly, on tensors whose dtype, device and layout it
# guarantees by construction (a per-call check of each costs 1-3 us, 60 calls a step);
# kernel_ops.py registers them as torch ops that check every argument first. The ids
# the attention kernels follow are checked in C on every call: a context length, row range
# or block id out of range raises IndexError, as torch's own index ops do.
_PAGED_ERRORS = {
    -1: (RuntimeError, "could not allocate its work buffers"),
    -2: (ValueError, "bad sizes (query heads must be a multiple of KV heads, sink < window)"),
    -3: (IndexError, "a context length is outside [1, block table width x block size], "
                     "or a chunk's rows outside q"),
    -4: (IndexError, "a block id is outside the KV cache"),
}


def _heads_contiguous(q: torch.Tensor) -> torch.Tensor:
    """q [T, H, D] whose heads and dims are one run per row (any row stride)."""
    return q if q.stride(2) == 1 and q.stride(1) == q.shape[2] else q.contiguous()


def _require_contiguous(op: str, *tensors: torch.Tensor) -> None:
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError(f"{op} needs contiguous caches, block tables and lengths")


def _raise_on(kernel: str, rc: int) -> None:
    if rc != 0:
        error, what = _PAGED_ERRORS.get(rc, (RuntimeError, f"error {rc}"))
        raise error(f"{kernel}: {what}")


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                 window: int | None, sink: int = 0) -> torch.Tensor:
    """q: [B, Hq, D] float32; k/v_cache: [blocks, bs, Hkv, D] contiguous float32;
    block_tables: [B, max_blocks] int64; context_lens: [B] int64 (keys per sequence, the
    query's own included). With a window, each query sees the first `sink` keys and the
    last window - sink (its own included); table entries of the blocks between are never
    read. Returns [B, Hq, D]. IndexError: a length or block id out of range (checked
    before any cache row is read)."""
    lib = kernels()
    assert lib is not None
    q = _heads_contiguous(q)
    _require_contiguous("paged_decode", k_cache, v_cache, block_tables, context_lens)
    batch, num_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    out = torch.empty(batch, num_heads, head_dim, dtype=q.dtype)
    rc = lib.paged_decode_f32(out.data_ptr(), q.data_ptr(), q.stride(0), k_cache.data_ptr(),
                              v_cache.data_ptr(), num_blocks, block_tables.data_ptr(),
                              context_lens.data_ptr(), batch, num_heads, num_kv_heads,
                              head_dim, block_size, block_tables.shape[1], scale,
                              window or 0, sink if window else 0)
    _raise_on("paged_decode_f32", rc)
    return out


def paged_prefill(out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, block_tables: torch.Tensor, starts: torch.Tensor,
                  lens: torch.Tensor, rows: torch.Tensor, scale: float, window: int | None,
                  sink: int = 0) -> None:
    """Causal attention of multi-token chunks over the paged cache, into out's rows.
    out: [T, Hq, D] contiguous float32; q: [T, Hq, D] float32, heads contiguous within a
    row; k/v_cache: [blocks, bs, Hkv, D] contiguous float32, the chunks' own keys written
    already; block_tables: [C, max_blocks] int64; starts (keys cached before each chunk),
    lens (its tokens), rows (its first row of q and out): [C] int64. With a window a query
    sees the first `sink` keys and the last window - sink (its own included). Rows outside
    the chunks are left as they are. IndexError: a length, row or block id out of range
    (checked before any cache row is read)."""
    lib = kernels()
    assert lib is not None
    q = _heads_contiguous(q)
    _require_contiguous("paged_prefill", out, k_cache, v_cache, block_tables, starts, lens,
                        rows)
    if out.shape != q.shape:
        raise ValueError(f"paged_prefill: out {tuple(out.shape)} must have q's shape")
    num_rows, num_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    rc = lib.paged_prefill_f32(out.data_ptr(), q.data_ptr(), q.stride(0), num_rows,
                               k_cache.data_ptr(), v_cache.data_ptr(), num_blocks,
                               block_tables.data_ptr(), starts.data_ptr(), lens.data_ptr(),
                               rows.data_ptr(), block_tables.shape[0], num_heads,
                               num_kv_heads, head_dim, block_size, block_tables.shape[1],
                               scale, window or 0, sink if window else 0)
    _raise_on("paged_prefill_f32", rc)


def rows_supported(*tensors: torch.Tensor) -> bool:
    """The row kernels take contiguous float32 CPU tensors."""
    return kernels() is not None and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
        for t in tensors)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             delta: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of x's rows times weight; with delta, first x += delta in place (the
    residual add before a norm). x, delta: [rows, dim] contiguous float32."""
    rows, dim = x.shape
    out = torch.empty_like(x)
    kernels().rms_norm_f32(out.data_ptr(), x.data_ptr(),
                           None if delta is None else delta.data_ptr(), weight.data_ptr(),
                           rows, dim, eps)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of gate_up = [gate | up]: [rows, 2 * inter] -> [rows, inter]."""
    rows, width = gate_up.shape
    out = torch.empty(rows, width // 2, dtype=gate_up.dtype)
    kernels().silu_mul_f32(out.data_ptr(), gate_up.data_ptr(), rows, width // 2)
    return out


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding of x: [T, heads, head_dim] whose heads and dims are
    contiguous within a row (a column slice of the fused q/k/v output is fine); cos, sin:
    [T, head_dim] contiguous. Returns a new contiguous [T, heads, head_dim]."""
    rows, heads, head_dim = x.shape
    out = torch.empty(rows, heads, head_dim, dtype=x.dtype)
    kernels().rope_f32(out.data_ptr(), x.data_ptr(), x.stride(0), cos.data_ptr(),
                       sin.data_ptr(), rows, heads, head_dim)
    return out
