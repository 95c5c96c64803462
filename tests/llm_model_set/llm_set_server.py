"""A filled inflight_batcher_llm repository on a tiny checkpoint, served by an
InferenceServer whose event loop runs on a background thread."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from llm_fixtures import make_tiny_checkpoint
from model_set_helpers import REPO

from llmserve.core.types import InferenceRequest, Tensor
from llmserve.options import ServerOptions
from llmserve.server import InferenceServer

sys.path.insert(0, str(REPO / "scripts"))
import fill_demo_repository  # noqa: E402


class ServedModelSet:
    def __init__(self, base: Path, prepare: Callable[[Path], None] | None = None):
        """prepare(repo): edits the filled repository before the server starts."""
        self.ckpt = make_tiny_checkpoint(base / "ckpt")
        self.repo = fill_demo_repository.fill_repository(
            base / "repo", self.ckpt, draft_dir=self.ckpt, max_batch_size=16
        )
        if prepare is not None:
            prepare(self.repo)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = InferenceServer(ServerOptions(model_repositories=[self.repo]))
        self.run(self.server.start())
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.ckpt))
        self.hf = AutoModelForCausalLM.from_pretrained(str(self.ckpt)).eval()

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    # -- requests -------------------------------------------------------------------------
    def infer(self, model: str, inputs: dict[str, np.ndarray], request_id: str = "") -> list:
        return self.run(self.ainfer(model, inputs, request_id))

    @staticmethod
    def core_request(model: str, inputs: dict[str, np.ndarray], request_id: str = "") -> InferenceRequest:
        tensors = {}
        for name, value in inputs.items():
            arr = np.asarray(value)
            dtype = {"O": "BYTES", "b": "BOOL"}.get(arr.dtype.kind)
            dtype = dtype or {np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32",
                              np.dtype(np.uint64): "UINT64"}[arr.dtype]
            tensors[name] = Tensor(name, dtype, arr)
        return InferenceRequest(model_name=model, inputs=tensors, id=request_id)

    async def ainfer(self, model: str, inputs: dict[str, np.ndarray], request_id: str = "",
                     stop_after: int | None = None) -> list:
        out = []
        agen = self.server.infer(self.core_request(model, inputs, request_id))
        try:
            async for resp in agen:
                assert resp.error is None, resp.error
                out.append(resp)
                if stop_after is not None and len(out) >= stop_after:
                    break
        finally:
            await agen.aclose()
        return out

    def stop_word(self, generated: list[int]) -> str:
        """A stop word for a greedy continuation: the text of a generated token (not the
        first) that is plain ASCII and new in the text so far."""
        decode = self.tokenizer.decode
        return next(w for i, t in enumerate(generated[1:], 1)
                    if (w := decode([t])).strip() and w.isascii() and w.isprintable()
                    and w not in decode(generated[:i]))

    def greedy(self, prompt: str, max_tokens: int) -> list[int]:
        """transformers' greedy continuation (stops at eos like the executor's end_id)."""
        ids = self.tokenizer.encode(prompt)
        with torch.no_grad():
            out = self.hf.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False,
                                   eos_token_id=self.tokenizer.eos_token_id,
                                   pad_token_id=self.tokenizer.pad_token_id)
        return out[0, len(ids):].tolist()


def text_request(prompt: str, max_tokens: int, **extra) -> dict[str, np.ndarray]:
    inputs = {"text_input": np.array([[prompt.encode()]], dtype=object),
              "max_tokens": np.array([[max_tokens]], np.int32)}
    for name, value in extra.items():
        inputs[name] = np.asarray(value)
    return inputs


def text_of(responses: list, name: str = "text_output") -> str:
    parts = []
    for resp in responses:
        t = resp.output(name)
        if t is not None:
            parts.extend(x.decode() if isinstance(x, bytes) else str(x) for x in t.data.reshape(-1))
    return "".join(parts)
