"""Where the real artifacts live: `../shared/conformance` beside the checkout (CI lays a
copy of shared/ there), or LLMSERVE_CONFORMANCE_DIR. Tests read them from there and never
copy them into the project; a missing folder is a failure that says where it looked."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def conformance_dir() -> Path:
    looked: list[Path] = []
    env = os.environ.get("LLMSERVE_CONFORMANCE_DIR")
    if env:
        looked.append(Path(env))
    # the checkout's parent first (CI, a developer's main), then further up (worktrees)
    looked += [p / "shared" / "conformance" for p in REPO.parents]
    for path in looked:
        if (path / "tensorrtllm_backend").is_dir() and (path / "python_backend").is_dir():
            return path
    raise AssertionError(
        "the conformance artifacts (tensorrtllm_backend/, python_backend/) were not found; "
        "looked in: " + ", ".join(str(p) for p in looked)
        + ". Set LLMSERVE_CONFORMANCE_DIR to the folder that holds them.")


def stock_model_set() -> Path:
    return conformance_dir() / "tensorrtllm_backend" / "all_models" / "inflight_batcher_llm"


def stock_fill_template() -> Path:
    return conformance_dir() / "tensorrtllm_backend" / "tools" / "fill_template.py"


def python_backend_examples() -> Path:
    return conformance_dir() / "python_backend" / "examples"
