"""TensorRT-LLM's Executor over llmserve.llm.Executor.

Differences from calling llmserve's executor directly, all TensorRT-LLM's behaviour: a
request the executor cannot take (bad values, an unsupported feature, a full queue) gets
an error response instead of an exception, so a caller's bookkeeping for the other
requests of the same enqueue_requests call stays intact; responses and stats come shaped
as TensorRT-LLM's (trtllm_results.py); the decoding mode restricts sampling as
TensorRT-LLM's decoding layers do (TopK ignores top_p, TopP ignores top_k). One leniency
of llmserve's own: an embedding bias shorter than the model's vocabulary is padded.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import itertools
import json
import logging
import threading
from pathlib import Path

import torch

from llmserve import llm
from llmserve.compat import trtllm_config, trtllm_request, trtllm_results
from llmserve.core.errors import InvalidArgument, NotFound, ServerError
from llmserve.llm.responses import ResponseRouter

logger = logging.getLogger("llmserve.compat.tensorrt_llm")

# ids of requests answered with an error at enqueue, far above any the executor hands out
_REJECTED_BASE = 1 << 62

# A shorter wait is raised to this. TensorRT-LLM's Triton model polls with a 1 ms timeout
# in a loop: idle, that woke ~800 times a second and took 3.6% of a core (and the GIL
# as often) against 0.5% at 20 ms. Responses still come at once (the wait ends when one
# arrives); only the loop's check of its own stop flag comes later.
MIN_WAIT_S = 0.02


def _seconds(timeout: datetime.timedelta | float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        return timeout.total_seconds()
    return float(timeout)


def check_model_path(model_path: str | Path | None) -> Path:
    """model_path must be a Hugging Face checkpoint folder; say plainly what it is not."""
    if model_path is None or str(model_path).strip() == "":
        raise InvalidArgument("the model path (gpt_model_path / engine_dir) is not set; "
                              "llmserve's executor needs a Hugging Face checkpoint folder")
    path = Path(model_path)
    if not path.is_dir():
        raise NotFound(f"model path '{path}' is not a folder; llmserve's executor needs a "
                       "Hugging Face checkpoint folder")
    config = path / "config.json"
    engines = sorted(p.name for p in path.glob("*.engine"))
    built = False
    if config.is_file():
        try:
            built = "build_config" in json.loads(config.read_text())
        except (OSError, ValueError):
            built = False
    if engines or built:
        raise InvalidArgument(
            f"'{path}' holds a TensorRT-LLM engine ({', '.join(engines) or 'build_config'}); "
            "the tensorrt_llm package is not installed, and llmserve's executor runs the "
            "Hugging Face checkpoint the engine was built from: point gpt_model_path "
            "(engine_dir) at that folder")
    if not config.is_file():
        raise InvalidArgument(f"'{path}' has no config.json; llmserve's executor needs a "
                              "Hugging Face checkpoint folder")
    return path


class Executor:
    """TensorRT-LLM's executor API (enqueue / await / cancel / stats) on llmserve's."""

    def __init__(self, model_path: str | Path | None,
                 model_type: llm.ModelType = llm.ModelType.DECODER_ONLY,
                 executor_config: llm.ExecutorConfig | None = None, *, runner=None) -> None:
        """runner: an already built engine (tests), as for llmserve.llm.Executor."""
        config = executor_config or trtllm_config.ExecutorConfig()
        if runner is None:
            model_path = check_model_path(model_path)
        trtllm_config.check_supported(config)
        # warned once, here, at load: TensorRT-LLM settings the executor cannot honour
        self.warnings = trtllm_config.ignored_settings(config)
        for message in self.warnings:
            logger.warning("ExecutorConfig: %s", message)
        self._mode = trtllm_config.decoding_mode(config)
        self._static = config.batching_type is llm.BatchingType.STATIC
        self._inner = llm.Executor(model_path, model_type, trtllm_config.to_llmserve(config),
                                   runner=runner)
        self._router = ResponseRouter()
        self._lock = threading.Lock()
        self._streaming: dict[int, bool] = {}
        self._rejected = itertools.count(_REJECTED_BASE)
        self._warned: set[str] = set()
        self._memory = trtllm_results.EngineMemory(self._inner.runner)

    @property
    def inner(self) -> llm.Executor:
        """The llmserve executor underneath."""
        return self._inner

    # -- enqueue ----------------------------------------------------------------------------
    def enqueue_request(self, request: llm.Request) -> int:
        reason = trtllm_request.unsupported(request)
        if reason is None:
            self._warn_once(trtllm_request.ineffective(request))
            try:
                request_id = self._inner.enqueue_request(self._prepared(request))
            except ServerError as exc:
                reason = str(exc)
        if reason is not None:
            return self._reject(request, reason)
        with self._lock:
            self._streaming[request_id] = bool(request.streaming)
        self._router.register(request_id)
        self._inner.add_response_callback(request_id, self._router.deliver)
        return request_id

    def enqueue_requests(self, requests: list[llm.Request]) -> list[int]:
        return [self.enqueue_request(r) for r in requests]

    def _prepared(self, request: llm.Request) -> llm.Request:
        """request as llmserve's executor takes it (a copy where anything changes): the
        sampling the decoding mode allows, and an embedding bias over the tokenizer's
        vocabulary (what tensorrtllm_backend's preprocessing builds) padded with zeros to
        the model's larger one (ids no word encodes to get no bias)."""
        changes: dict[str, object] = {}
        sc = request.sampling_config
        mode = self._mode
        if mode is not None and mode.name == "TopK" and sc.top_p is not None:
            changes["sampling_config"] = dataclasses.replace(sc, top_p=None)
        elif mode is not None and mode.name == "TopP" and sc.top_k is not None:
            changes["sampling_config"] = dataclasses.replace(sc, top_k=None)
        bias = request.embedding_bias
        if bias is not None:
            bias = torch.as_tensor(bias, dtype=torch.float32).reshape(-1)
            vocab = self._inner.vocab_size
            if 0 < bias.numel() < vocab:
                changes["embedding_bias"] = torch.nn.functional.pad(bias, (0, vocab - bias.numel()))
        if not changes:
            return request
        request = copy.copy(request)
        for name, value in changes.items():
            setattr(request, name, value)
        return request

    def _reject(self, request: llm.Request, reason: str) -> int:
        request_id = next(self._rejected)
        self._router.register(request_id)
        self._router.deliver(llm.Response(request_id, error_msg=reason,
                                          client_id=request.client_id))
        return request_id

    def _warn_once(self, notes: list[str]) -> None:
        for note in notes:
            if note not in self._warned:
                self._warned.add(note)
                logger.warning("Request field %s is accepted but has no effect", note)

    # -- responses --------------------------------------------------------------------------
    def await_responses(
        self,
        id: int | list[int] | datetime.timedelta | None = None,  # noqa: A002 (TRT-LLM name)
        timeout: datetime.timedelta | float | None = None,
    ) -> list[llm.Response] | list[list[llm.Response]]:
        """As TensorRT-LLM's: responses of one id, of several (a list per id) or of all
        requests (id None), waiting up to timeout for the first."""
        if isinstance(id, datetime.timedelta):
            id, timeout = None, id
        seconds = _seconds(timeout)
        if seconds is not None and 0 < seconds < MIN_WAIT_S:
            seconds = MIN_WAIT_S
        out = self._router.await_responses(id, seconds)
        if id is None or isinstance(id, int):
            return self._shape(out)  # type: ignore[arg-type]
        return [self._shape(rs) for rs in out]  # type: ignore[arg-type]

    def _shape(self, responses: list[llm.Response]) -> list[llm.Response]:
        with self._lock:
            streaming = [self._streaming.get(r.request_id, False) for r in responses]
            for r in responses:
                if r.is_final:
                    self._streaming.pop(r.request_id, None)
        return [trtllm_results.shape_response(r, s) for r, s in zip(responses, streaming,
                                                                     strict=True)]

    def get_num_responses_ready(self, id: int | None = None) -> int:  # noqa: A002
        return self._router.num_ready(id)

    # -- control and stats ------------------------------------------------------------------
    def cancel_request(self, id: int) -> None:  # noqa: A002
        if id < _REJECTED_BASE:  # a rejected request has its final response already
            self._inner.cancel_request(id)

    def get_latest_iteration_stats(self) -> list[trtllm_results.IterationStats]:
        stats = self._inner.get_latest_iteration_stats()
        if not stats:
            return []
        memory = self._memory.usage()
        return [trtllm_results.iteration_stats(s, memory, self._static) for s in stats]

    def get_latest_request_stats(self) -> list[trtllm_results.RequestStatsPerIteration]:
        return [trtllm_results.request_stats(s) for s in self._inner.get_latest_request_stats()]

    def can_enqueue_requests(self) -> bool:
        return self._inner.can_enqueue_requests()

    def is_participant(self) -> bool:
        return True  # one process: it is always the leader

    def shutdown(self) -> None:
        self._inner.shutdown()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
