"""tensorrtllm_backend's own inflight_batcher_llm folder, copied to a temporary folder,
filled with its own tools/fill_template.py (tensorrt_llm as `triton_backend:python`, so
its stock tensorrt_llm/1/model.py runs on llmserve's tensorrt_llm stand-in) on a tiny
checkpoint, served by a LiveServer on free ports; plus transformers references."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conformance_paths import stock_fill_template, stock_model_set
from llm_fixtures import make_tiny_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_live import LiveServer, e2e_options  # noqa: E402
from llm_e2e_helpers import LlmE2E, grpc_text_inputs  # noqa: E402

__all__ = ["StockPythonServer", "fill_stock_repository", "grpc_text_inputs"]

MAX_BATCH = 8


def template_values(ckpt: Path) -> dict[str, dict[str, str]]:
    """Per model, the placeholders to fill (as tensorrtllm_backend's docs fill them)."""
    c = str(ckpt)
    batch = str(MAX_BATCH)
    return {
        "preprocessing": {"tokenizer_dir": c, "triton_max_batch_size": batch,
                          "preprocessing_instance_count": "1", "add_special_tokens": "true"},
        "postprocessing": {"tokenizer_dir": c, "triton_max_batch_size": batch,
                           "postprocessing_instance_count": "1", "skip_special_tokens": "true"},
        "tensorrt_llm": {
            "triton_backend": "python", "triton_max_batch_size": batch,
            "decoupled_mode": "true", "engine_dir": c, "tokenizer_dir": c,
            "max_queue_delay_microseconds": "0", "batching_strategy": "inflight_fused_batching",
            "max_beam_width": "2", "exclude_input_in_output": "true",
            "encoder_input_features_data_type": "TYPE_FP16", "logits_datatype": "TYPE_FP32",
            "kv_cache_free_gpu_mem_fraction": "0.5", "cancellation_check_period_ms": "20",
            "cuda_graph_mode": "true",  # no CUDA graphs here: a warning at load
        },
        "tensorrt_llm_bls": {"triton_max_batch_size": batch, "decoupled_mode": "true",
                             "bls_instance_count": batch, "accumulate_tokens": "false",
                             "logits_datatype": "TYPE_FP32"},
        "ensemble": {"triton_max_batch_size": batch, "logits_datatype": "TYPE_FP32"},
    }


def fill(config: Path, values: dict[str, str]) -> None:
    subs = ",".join(f"{k}:{v}" for k, v in values.items())
    subprocess.run([sys.executable, str(stock_fill_template()), "-i", str(config), subs],
                   check=True)


def fill_stock_repository(dst: Path, ckpt: Path) -> Path:
    """Copy the stock folder to dst and fill every config.pbtxt with the stock script;
    plus nd_tensorrt_llm: the stock tensorrt_llm folder again, decoupled_mode false and
    normalize_log_probs true."""
    shutil.copytree(stock_model_set(), dst)
    values = template_values(ckpt)
    for model, model_values in values.items():
        fill(dst / model / "config.pbtxt", model_values)
    nd = dst / "nd_tensorrt_llm"
    shutil.copytree(stock_model_set() / "tensorrt_llm", nd)
    config = nd / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "tensorrt_llm"', 'name: "nd_tensorrt_llm"'))
    fill(config, dict(values["tensorrt_llm"], decoupled_mode="false", normalize_log_probs="true"))
    return dst


class StockPythonServer:
    """The served stock model set, its tokenizer and the transformers reference."""

    def __init__(self, base: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.ckpt = make_tiny_checkpoint(base / "ckpt", max_position_embeddings=512)
        self.repo = fill_stock_repository(base / "repo", self.ckpt)
        self.live = LiveServer(e2e_options(model_repositories=[self.repo]))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.ckpt))
        self.hf = AutoModelForCausalLM.from_pretrained(str(self.ckpt)).eval()

    def close(self) -> None:
        self.live.stop()

    def model_object(self, name: str = "tensorrt_llm"):
        """The TritonPythonModel instance serving `name` (its first instance)."""
        return self.live.server.models.resolve(name)._instances[0].obj

    # -- transformers references (the e2e helpers' own) ---------------------------------
    greedy_ids = LlmE2E.greedy_ids  # (prompt_ids, n, *, banned=()): ends after eos, included
    log_probs = LlmE2E.log_probs  # (prompt_ids, generated): transformers' log softmax

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
