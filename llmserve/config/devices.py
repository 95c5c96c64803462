"""Which CUDA GPUs this process can use and their compute capability, asked of torch.

Instance-group completion and cc_model_filenames depend on it. Without an NVIDIA driver
torch is not even imported, so configuration tools stay fast on CPU-only machines.
"""

from __future__ import annotations

import functools
import os
import sys

# Triton's --min-supported-compute-capability default.
MIN_COMPUTE_CAPABILITY = 6.0


def _torch_cuda():
    if "torch" not in sys.modules and not any(
        os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")
    ):
        return None
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
    except RuntimeError:
        return None
    return torch.cuda


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[tuple[int, str], ...]:
    cuda = _torch_cuda()
    if cuda is None:
        return ()
    found = []
    for index in range(cuda.device_count()):
        major, minor = cuda.get_device_capability(index)
        found.append((index, f"{major}.{minor}"))
    return tuple(found)


def supported_gpus(min_compute_capability: float = MIN_COMPUTE_CAPABILITY) -> list[int]:
    """Device ids of the usable GPUs (compute capability >= the minimum); [] without CUDA."""
    return [i for i, cc in _probe() if float(cc) >= min_compute_capability]


def compute_capability(device_id: int) -> str | None:
    """"major.minor" of a GPU (the key format of cc_model_filenames), None if absent."""
    for i, cc in _probe():
        if i == device_id:
            return cc
    return None
