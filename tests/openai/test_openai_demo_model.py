"""The OpenAI API on the bundled demo model (models/demo-llm) through the filled
inflight_batcher_llm repository: chat with its template, streaming, greedy completions
equal to transformers."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo-llm"

pytestmark = pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(),
                                reason="models/demo-llm is not built")


async def _cancel_leftover_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "scripts"))
    import fill_demo_repository
    import openai

    from llmserve.frontends import start_frontends
    from llmserve.options import ServerOptions
    from llmserve.server import InferenceServer

    repo = fill_demo_repository.fill_repository(tmp_path_factory.mktemp("demo") / "repo", DEMO)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro, timeout=180):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    options = ServerOptions(model_repositories=[repo], http_address="127.0.0.1", http_port=0,
                            allow_grpc=False, allow_metrics=False, exit_timeout_secs=5.0,
                            model_load_thread_count=1)
    server = InferenceServer(options)
    call(server.start())
    frontends = call(start_frontends(server, options))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{frontends.http_port}/v1",
                           api_key="unused", max_retries=0, timeout=120)
    try:
        yield client
    finally:
        call(server.stop())
        call(frontends.stop())
        call(_cancel_leftover_tasks())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def test_demo_completion_equals_transformers(demo):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(DEMO))
    model = AutoModelForCausalLM.from_pretrained(str(DEMO)).eval()
    prompt = "Once upon a time"
    ids = tok.encode(prompt)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    want = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    r = demo.completions.create(model="ensemble", prompt=prompt, max_tokens=16, temperature=0)
    assert r.choices[0].text == want
    assert r.usage.prompt_tokens == len(ids)


def test_demo_chat_and_stream(demo):
    messages = [{"role": "user", "content": "Tell me a short story about a cat."}]
    r = demo.chat.completions.create(model="tensorrt_llm_bls", messages=messages,
                                     max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    assert text.strip() and r.usage.completion_tokens > 0
    chunks = list(demo.chat.completions.create(model="ensemble", messages=messages,
                                               max_tokens=24, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert demo.models.list().data[0].model_dump()["max_model_len"] == 512
