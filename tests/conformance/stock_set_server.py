"""tensorrtllm_backend's own inflight_batcher_llm model set, unchanged, filled with its own
tools/fill_template.py the way its docs do, on a tiny checkpoint, served behind the real
frontends: the files come from the conformance folder and are copied to a tmp folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from conformance_paths import stock_fill_template, stock_model_set
from e2e_live import LiveServer, e2e_options
from llm_e2e_helpers import LlmE2E
from llm_fixtures import make_tiny_checkpoint

MODELS = ("preprocessing", "postprocessing", "tensorrt_llm", "tensorrt_llm_bls", "ensemble")
MAX_BATCH_SIZE = 8
MAX_BEAM_WIDTH = 2
CONTEXT = 512  # the checkpoint's max_position_embeddings: the executor's max_seq_len


def fill_values(ckpt: Path) -> dict[str, str]:
    """The fill_template.py argument per model, as tensorrtllm_backend's docs give them
    (README "Prepare the model repository"), with llmserve's native backend, decoupled
    mode and a checkpoint folder as engine_dir (commas and colons escaped for split())."""
    path = str(ckpt.resolve()).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")
    bs = f"triton_max_batch_size:{MAX_BATCH_SIZE}"
    return {
        "preprocessing": f"tokenizer_dir:{path},{bs},preprocessing_instance_count:1",
        "postprocessing": f"tokenizer_dir:{path},{bs},postprocessing_instance_count:1",
        "tensorrt_llm": (
            f"triton_backend:tensorrtllm,{bs},decoupled_mode:true,max_beam_width:{MAX_BEAM_WIDTH},"
            f"engine_dir:{path},tokenizer_dir:{path},max_queue_delay_microseconds:0,"
            "batching_strategy:inflight_fused_batching,max_queue_size:0,"
            "encoder_input_features_data_type:TYPE_FP16,logits_datatype:TYPE_FP32"),
        "tensorrt_llm_bls": (f"{bs},decoupled_mode:true,bls_instance_count:{MAX_BATCH_SIZE},"
                             "logits_datatype:TYPE_FP32"),
        "ensemble": f"{bs},logits_datatype:TYPE_FP32",
    }


def fill_stock_repository(out: Path, ckpt: Path) -> Path:
    """Copy the stock model set to `out` and fill each config.pbtxt in place with the
    stock fill_template.py, run by this interpreter."""
    shutil.copytree(stock_model_set(), out, ignore=shutil.ignore_patterns("__pycache__"))
    for model, values in fill_values(ckpt).items():
        subprocess.run([sys.executable, str(stock_fill_template()), "-i",
                        str(out / model / "config.pbtxt"), values], check=True)
    return out


class StockSet(LlmE2E):
    """The served stock set with LlmE2E's transformers references and HTTP helpers."""

    def __init__(self, base: Path) -> None:  # noqa: D107 - LlmE2E's fields, another repo
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.ckpt = make_tiny_checkpoint(base / "ckpt", max_position_embeddings=CONTEXT)
        self.repo = fill_stock_repository(base / "repo", self.ckpt)
        self.live = LiveServer(e2e_options(model_repositories=[self.repo]))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.ckpt))
        self.hf = AutoModelForCausalLM.from_pretrained(str(self.ckpt)).eval()
        self.http = httpx.Client(base_url=f"http://{self.live.http_url}", timeout=60)

    def openai(self):
        from openai import OpenAI

        return OpenAI(base_url=f"http://{self.live.http_url}/v1", api_key="unused",
                      max_retries=0, timeout=60)
