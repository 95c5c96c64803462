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


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_demo_streams_under_load_equal_the_whole_text(demo, model):
    """24 greedy streams at once: while the pipeline is behind, a stream's tokens arrive
    merged into fewer chunks (README "Streamed tokens under load"); the text and the
    token count are those of the same request not streamed, whatever the chunking."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"Story {i}: the {w} went to the" for i, w in
               enumerate(["cat", "dog", "river", "king", "ship", "tree"])]
    want = {p: demo.completions.create(model=model, prompt=p, max_tokens=32, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].text
            for p in prompts}

    def streamed(prompt: str) -> tuple[str, int]:
        stream = demo.completions.create(model=model, prompt=prompt, max_tokens=32,
                                         temperature=0, stream=True,
                                         stream_options={"include_usage": True},
                                         extra_body={"ignore_eos": True})
        text, tokens = "", 0
        for chunk in stream:
            text += "".join(c.text for c in chunk.choices)
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return text, tokens

    with ThreadPoolExecutor(24) as pool:
        got = list(pool.map(streamed, [prompts[i % len(prompts)] for i in range(24)]))
    for i, (text, tokens) in enumerate(got):
        assert text == want[prompts[i % len(prompts)]]
        assert tokens == 32
