"""Fixtures for the executor tests: one tiny Llama checkpoint, its transformers
reference model and one shared ModelRunner (each Executor re-allocates its cache)."""

from __future__ import annotations

import pytest
from llm_fixtures import load_hf_model, make_tiny_checkpoint

from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig, ModelType


@pytest.fixture(scope="session")
def exec_ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("exec_ckpt"), "llama")


@pytest.fixture(scope="session")
def exec_hf(exec_ckpt):
    return load_hf_model(exec_ckpt)


@pytest.fixture(scope="session")
def exec_runner(exec_ckpt):
    from llmserve.llm.engine import ModelRunner

    return ModelRunner(exec_ckpt)


@pytest.fixture
def make_executor(exec_ckpt, exec_runner):
    """make_executor(**ExecutorConfig fields, kv_tokens=N, reuse=bool) -> Executor."""
    made: list[Executor] = []

    def make(kv_tokens: int = 2048, reuse: bool = False, **kw) -> Executor:
        kw.setdefault("tokens_per_block", 8)
        cfg = ExecutorConfig(
            kv_cache_config=KvCacheConfig(max_tokens=kv_tokens, enable_block_reuse=reuse), **kw
        )
        ex = Executor(exec_ckpt, ModelType.DECODER_ONLY, cfg, runner=exec_runner)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown()
