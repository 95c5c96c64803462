"""Shared server for the inflight_batcher_llm e2e tests: the filled model set on a tiny
random checkpoint plus non-decoupled and queue-limited copies, behind the real frontends
(E's LiveServer), and transformers references to compare against."""

from __future__ import annotations

import json
import queue
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import torch
import tritonclient.grpc as tg
from e2e_live import LiveServer, e2e_options
from llm_fixtures import EOS_ID, make_tiny_checkpoint
from tritonclient.utils import np_to_triton_dtype

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "all_models" / "inflight_batcher_llm"

sys.path.insert(0, str(ROOT / "scripts"))
import fill_demo_repository as fill  # noqa: E402


def _copy_model(root: Path, template: str, name: str, values: dict[str, str],
                renames: dict[str, str]) -> None:
    """Copy one template folder as `name`, rename model references, fill placeholders."""
    dst = root / name
    shutil.copytree(TEMPLATES / template, dst, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "1").mkdir(exist_ok=True)
    config = dst / "config.pbtxt"
    text = config.read_text()
    for old, new in renames.items():
        text = text.replace(old, new)
    config.write_text(text)
    fill.fill_file(config, values)


def build_repositories(base: Path, ckpt: Path) -> list[Path]:
    """The decoupled model set (as scripts/fill_demo_repository.py fills it) and a second
    root with nd_* (decoupled_mode false) copies and qf_tensorrt_llm (max_queue_size 1,
    engine_max_batch_size 1)."""
    main = fill.fill_repository(base / "main", ckpt, max_batch_size=16)
    extra = base / "extra"
    extra.mkdir()
    nd = fill.model_values(ckpt, decoupled=False, max_batch_size=16)
    _copy_model(extra, "tensorrt_llm", "nd_tensorrt_llm", nd["tensorrt_llm"],
                {'name: "tensorrt_llm"': 'name: "nd_tensorrt_llm"'})
    _copy_model(extra, "ensemble", "nd_ensemble", nd["ensemble"],
                {'name: "ensemble"': 'name: "nd_ensemble"',
                 'model_name: "tensorrt_llm"': 'model_name: "nd_tensorrt_llm"'})
    bls = dict(nd["tensorrt_llm_bls"], tensorrt_llm_model_name="nd_tensorrt_llm")
    _copy_model(extra, "tensorrt_llm_bls", "nd_tensorrt_llm_bls", bls,
                {'name: "tensorrt_llm_bls"': 'name: "nd_tensorrt_llm_bls"'})
    qf = fill.model_values(ckpt, decoupled=True, max_batch_size=16)["tensorrt_llm"]
    qf.update(max_queue_size="1", engine_max_batch_size="1")
    _copy_model(extra, "tensorrt_llm", "qf_tensorrt_llm", qf,
                {'name: "tensorrt_llm"': 'name: "qf_tensorrt_llm"'})
    return [main, extra]


class LlmE2E:
    """The running server, its URLs, the tokenizer and the transformers reference."""

    def __init__(self, base: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.ckpt = make_tiny_checkpoint(base / "ckpt", max_position_embeddings=1024)
        roots = build_repositories(base, self.ckpt)
        self.live = LiveServer(e2e_options(model_repositories=roots))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.ckpt))
        self.hf = AutoModelForCausalLM.from_pretrained(str(self.ckpt)).eval()
        self.http = httpx.Client(base_url=f"http://{self.live.http_url}", timeout=60)

    @property
    def server(self):
        return self.live.server

    def executor(self, model: str = "tensorrt_llm"):
        return self.server.models.resolve(model)._backend_model.model.executor

    def close(self) -> None:
        self.http.close()
        self.live.stop()

    # -- transformers references ---------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    def greedy_ids(self, prompt_ids: list[int], n: int, *, stop_at_eos: bool = True,
                   banned: tuple[int, ...] = ()) -> list[int]:
        """Greedy continuation with transformers logits; stops after eos (included) like
        the executor with end_id = eos; `banned` ids never get picked (bad words)."""
        ids = list(prompt_ids)
        out: list[int] = []
        with torch.inference_mode():
            for _ in range(n):
                logits = self.hf(torch.tensor([ids])).logits[0, -1]
                for t in banned:
                    logits[t] = float("-inf")
                token = int(logits.argmax())
                ids.append(token)
                out.append(token)
                if stop_at_eos and token == EOS_ID:
                    break
        return out

    def greedy_text(self, prompt: str, n: int, **kw) -> str:
        return self.tokenizer.decode(self.greedy_ids(self.encode(prompt), n, **kw),
                                     skip_special_tokens=True)

    def log_probs(self, prompt_ids: list[int], generated: list[int]) -> list[float]:
        """log softmax of transformers logits at each generated token."""
        ids = prompt_ids + generated
        with torch.inference_mode():
            logits = self.hf(torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        start = len(prompt_ids) - 1
        return [float(lp[start + i, t]) for i, t in enumerate(generated)]

    # -- HTTP generate -------------------------------------------------------------------
    def generate(self, model: str, body: dict) -> dict:
        r = self.http.post(f"/v2/models/{model}/generate", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def generate_stream(self, model: str, body: dict) -> list[dict]:
        r = self.http.post(f"/v2/models/{model}/generate_stream", json=body)
        assert r.status_code == 200, r.text
        return sse_events(r.text)


def sse_events(body: str) -> list[dict]:
    """The JSON documents of the `data:` lines of an SSE body."""
    return [json.loads(line[len("data:"):]) for line in body.splitlines()
            if line.startswith("data:")]


_SHARED: dict[str, LlmE2E] = {}


def shared_llm_e2e(config, tmp_path_factory) -> LlmE2E:
    """One server for every test_e2e_llm_* module of the session, stopped at its end."""
    if "server" not in _SHARED:
        server = LlmE2E(tmp_path_factory.mktemp("llm_e2e"))
        _SHARED["server"] = server

        def stop() -> None:
            _SHARED.pop("server", None)
            server.close()

        config.add_cleanup(stop)
    return _SHARED["server"]


# -- gRPC streaming -------------------------------------------------------------------------
def grpc_text_inputs(prompt: str, max_tokens: int, **extra) -> list:
    values = {"text_input": np.array([[prompt.encode()]], dtype=object),
              "max_tokens": np.array([[max_tokens]], np.int32),
              "stream": np.array([[True]])}
    values.update(extra)
    inputs = []
    for name, value in values.items():
        value = np.asarray(value)
        tensor = tg.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def grpc_stream(llm, model: str, requests: dict[str, list],
                timeout: float = 30) -> dict[str, str]:
    """Send every request (id -> inputs) on one stream; the streamed text per request id."""
    q: queue.Queue = queue.Queue()
    client = tg.InferenceServerClient(llm.live.grpc_url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    texts = {rid: "" for rid in requests}
    pending = set(requests)
    try:
        for rid, inputs in requests.items():
            client.async_stream_infer(model, inputs, request_id=rid,
                                      enable_empty_final_response=True)
        while pending:
            result, error = q.get(timeout=timeout)
            assert error is None, error
            response = result.get_response()
            out = result.as_numpy("text_output")
            if out is not None:
                texts[response.id] += "".join(x.decode("utf-8", "replace")
                                              for x in out.reshape(-1))
            if response.parameters["triton_final_response"].bool_param:
                pending.discard(response.id)
    finally:
        client.stop_stream()
        client.close()
    return texts
