"""OpenAI frontend fixtures: one live llmserve (HTTP only, 127.0.0.1, free port) over the
inflight_batcher_llm model set filled for a tiny checkpoint, plus the script test models
of tests/openai/models (their tokenizer_dir filled with the checkpoint's tokenizer)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
from pathlib import Path

import pytest
from llm_fixtures import build_tokenizer, make_tiny_checkpoint

from llmserve.options import ServerOptions

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(__file__).parent / "models"


class OpenAIServer:
    def __init__(self, base: Path):
        sys.path.insert(0, str(ROOT / "scripts"))
        import fill_demo_repository

        from llmserve.frontends import start_frontends
        from llmserve.server import InferenceServer

        self.ckpt = make_tiny_checkpoint(base / "ckpt")
        plain = base / "tokenizer_without_chat_template"
        tok = build_tokenizer()
        tok.chat_template = None
        tok.save_pretrained(str(plain))
        repo = fill_demo_repository.fill_repository(base / "repo", self.ckpt, max_batch_size=8)
        script = MODELS / "oai_script"
        for name, tokenizer_dir in (("oai_script", self.ckpt), ("oai_slow", plain)):
            (repo / name / "1").mkdir(parents=True)
            config = (MODELS / name / "config.pbtxt").read_text()
            (repo / name / "config.pbtxt").write_text(
                config.replace("${tokenizer_dir}", str(tokenizer_dir)))
            shutil.copy(script / "1" / "model.py", repo / name / "1" / "model.py")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        options = ServerOptions(model_repositories=[repo], http_address="127.0.0.1",
                                http_port=0, allow_grpc=False, allow_metrics=False,
                                exit_timeout_secs=5.0,
                                model_load_thread_count=1)
        self.server = InferenceServer(options)
        self.call(self.server.start(), timeout=180)
        self.frontends = self.call(start_frontends(self.server, options))
        self.base_url = f"http://127.0.0.1:{self.frontends.http_port}/v1"

    def call(self, coro, timeout: float = 60):  # noqa: ANN001
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def executor(self):  # noqa: ANN201
        return self.server.models.resolve("tensorrt_llm")._backend_model.model.executor

    def stop(self) -> None:
        try:
            self.call(self.server.stop())
            self.call(self.frontends.stop())
            self.call(cancel_leftover_tasks())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


async def cancel_leftover_tasks() -> None:
    """Cancel tasks still parked on the loop (sse-starlette's shutdown watcher)."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="session")
def oai(tmp_path_factory):
    server = OpenAIServer(tmp_path_factory.mktemp("openai"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(oai):
    import openai

    return openai.OpenAI(base_url=oai.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def hf(oai):
    """transformers reference: (tokenizer, model) of the tiny checkpoint."""
    from llm_fixtures import load_hf_model
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(oai.ckpt)), load_hf_model(oai.ckpt)


@pytest.fixture
def aclient(oai):
    """openai.AsyncOpenAI factory: make one inside each event loop (asyncio.run)."""
    import openai

    return lambda: openai.AsyncOpenAI(base_url=oai.base_url, api_key="unused", max_retries=0,
                                      timeout=60)


@pytest.fixture(scope="session")
def greedy(hf):
    """greedy(prompt_ids, max_tokens) -> (text, ids): transformers' greedy continuation,
    stopping at eos as the model set does (end_id from the tokenizer)."""
    return lambda prompt_ids, max_tokens: _hf_greedy(hf, prompt_ids, max_tokens)


def _hf_greedy(hf, prompt_ids: list[int], max_tokens: int) -> tuple[str, list[int]]:
    import torch

    tok, model = hf
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_tokens,
                             do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    ids = out[0, len(prompt_ids):].tolist()
    if ids and ids[-1] == tok.eos_token_id:
        ids = ids[:-1]
    return tok.decode(ids, skip_special_tokens=True), ids
