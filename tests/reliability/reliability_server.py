"""The server the reliability suite attacks: the inflight_batcher_llm model set on a tiny
checkpoint (a LoRA adapter prefetched as task 7, a small engine batch and queue so
overload is reachable), in explicit mode with every model loaded, on 127.0.0.1 ports
chosen at run time; plus probes of what it holds (KV blocks, LoRA pins, queue slots)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from e2e.e2e_live import LiveServer, e2e_options
from llm_fixtures import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import fill_demo_repository  # noqa: E402

LORA_TASK = 7
ENGINE_BATCH = 4  # requests the executor runs at once
QUEUE_SIZE = 4  # requests it queues beyond those; more are refused with 503
PROMPT = "The quick brown fox"


def _prefetch_lora(ckpt: Path, base: Path) -> Path:
    """lora_prefetch_dir with one random adapter (task LORA_TASK) for ckpt."""
    from lora_fixtures import lora_tensors, make_peft_adapter

    adapter = make_peft_adapter(ckpt, base / "adapter", seed=3, r=2, alpha=4,
                                target_modules=("q_proj", "v_proj"))
    weights, config = lora_tensors(adapter, "float32")
    folder = base / "prefetch" / str(LORA_TASK)
    folder.mkdir(parents=True)
    np.save(folder / "model.lora_weights.npy", weights[None])
    np.save(folder / "model.lora_config.npy", config[None])
    return folder.parent


def build_repository(base: Path) -> Path:
    ckpt = make_tiny_checkpoint(base / "ckpt")
    prefetch = _prefetch_lora(ckpt, base)
    trtllm = {"max_queue_size": str(QUEUE_SIZE), "engine_max_batch_size": str(ENGINE_BATCH),
              "max_tokens_in_paged_kv_cache": "4096", "lora_prefetch_dir": str(prefetch),
              "lora_cache_max_adapter_size": "8", "lora_cache_host_memory_bytes": str(8 << 20)}
    return fill_demo_repository.fill_repository(base / "repo", ckpt, max_batch_size=8,
                                                instances=1, extra={"tensorrt_llm": trtllm})


class LLMServer(LiveServer):
    def __init__(self, base: Path):
        self.repo = build_repository(base)
        super().__init__(e2e_options(model_repositories=[self.repo],
                                     model_control_mode="explicit", load_models=["*"]))
        self.url = f"http://{self.http_url}"

    def client(self, **kw) -> httpx.Client:  # noqa: ANN003
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60), **kw)

    def executor(self):  # noqa: ANN201
        return self.server.models.resolve("tensorrt_llm")._backend_model.model.executor

    def python_model(self, name: str):  # noqa: ANN201
        """The TritonPythonModel object of model `name`'s first instance."""
        return self.server.models.resolve(name)._instances[0].obj

    def greedy(self, prompt: str = PROMPT, max_tokens: int = 8) -> str:
        with self.client() as c:
            r = c.post("/v2/models/ensemble/generate",
                       json={"text_input": prompt, "max_tokens": max_tokens, "top_k": 1})
        assert r.status_code == 200, r.text
        return r.json()["text_output"]

    # -- what the server holds --------------------------------------------------------
    def held(self) -> dict[str, float]:
        """Executor state and the gauges autoscalers read; all 0 when idle."""
        ex = self.executor()
        with ex._cond:
            queued = ex._num_queued
        metrics = httpx.get(self.metrics_url, timeout=10).text
        return {
            "kv_blocks_used": ex.block_manager.num_used_blocks,
            "lora_pins": ex.lora_cache.stats().num_pins,
            "queue_slots": queued,
            "requests": len(ex._stepper.states),
            "gauge_active": gauge(metrics, "nv_trt_llm_request_metrics", "active"),
            "gauge_kv_used": gauge(metrics, "nv_trt_llm_kv_cache_block_metrics", "used"),
        }

    def wait_idle(self, within: float) -> tuple[float, dict[str, float]]:
        """Seconds until everything held is back to 0 (or within, with what is left)."""
        start = time.monotonic()
        while True:
            held = self.held()
            elapsed = time.monotonic() - start
            if not any(held.values()) or elapsed > within:
                return elapsed, held
            time.sleep(0.05)


def gauge(metrics: str, family: str, kind: str, model: str = "tensorrt_llm") -> float:
    pattern = rf'^{family}{{[^}}]*model="{model}"[^}}]*="{kind}"[^}}]*}} (\S+)$'
    found = re.search(pattern, metrics, re.M)
    return float(found.group(1)) if found else 0.0
