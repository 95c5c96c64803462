"""The native `tensorrtllm` backend: tensorrt_llm models on llmserve's LLM executor.

The registry finds `load_model` here (backend "tensorrtllm"). The model set's Python
models (preprocessing, postprocessing, BLS) share the helpers in `text`.
"""

from __future__ import annotations

import concurrent.futures
import threading

from llmserve.backends.base import BackendInstance, BackendModel, InstanceSpec, ModelSpec
from llmserve.backends.tensorrtllm.backend import TensorRTLLMModel
from llmserve.backends.tensorrtllm.parameters import INEFFECTIVE_PARAMETERS
from llmserve.core.errors import ServerError
from llmserve.llm.kv_events import KvEventsConfig
from llmserve.scheduling.request import SchedRequest

__all__ = ["INEFFECTIVE_PARAMETERS", "TensorRTLLMModel", "load_model"]


class _Instance(BackendInstance):
    """Every instance shares the model's one executor (it owns the device)."""

    def __init__(self, model: TensorRTLLMModel):
        self._model = model

    def execute(self, batch: list) -> concurrent.futures.Future:
        done: concurrent.futures.Future = concurrent.futures.Future()
        pending = [len(batch)]
        lock = threading.Lock()

        def one_done(_response) -> None:
            with lock:
                pending[0] -= 1
                finished = pending[0] == 0
            if finished and not done.done():
                done.set_result(None)

        for sched in batch:
            sched.sink.add_final_callback(one_done)
        if not batch:
            done.set_result(None)
        self._model.execute(batch)
        return done


class _Model(BackendModel):
    def __init__(self, spec: ModelSpec):
        registry = getattr(spec.server, "metrics_registry", None)
        self.model = TensorRTLLMModel(
            spec.config, spec.model_dir, spec.version, metrics_registry=registry,
            on_fatal=spec.on_fatal,
        )
        events = getattr(spec.options, "kv_events_config", None)
        if events:
            self.model.settings.executor_config.kv_events_config = kv_events_for(
                events, spec.name, spec.version)
        self.model.load()

    def create_instance(self, instance: InstanceSpec) -> BackendInstance:
        return _Instance(self.model)

    def admission_error(self, request: SchedRequest) -> ServerError | None:
        # refused in the caller's thread: under overload a 503 needs no worker thread
        return self.model.admission_error(request)

    def unload(self) -> None:
        self.model.unload()


def load_model(spec: ModelSpec) -> BackendModel:
    """Load one tensorrt_llm model version: read its parameters, start the executor."""
    return _Model(spec)


_EVENT_MODELS: list[tuple[str, int]] = []  # LLM model versions publishing KV events, in order


def kv_events_for(values: dict, name: str, version: int) -> KvEventsConfig:
    """--kv-events-config for one model version. Like vLLM's data-parallel ranks, each
    further LLM model in the server publishes on the next port (its rank says which)."""
    config = KvEventsConfig.from_dict(dict(values))
    key = (name, version)
    if key not in _EVENT_MODELS:
        _EVENT_MODELS.append(key)
    rank = _EVENT_MODELS.index(key)
    config.data_parallel_rank = rank
    for field in ("endpoint", "replay_endpoint"):
        setattr(config, field, _offset(getattr(config, field), rank))
    return config


def _offset(endpoint: str | None, rank: int) -> str | None:
    if not endpoint or rank == 0:
        return endpoint
    if endpoint.startswith(("ipc://", "inproc://")):
        return f"{endpoint}_dp{rank}"
    base, _, port = endpoint.rpartition(":")
    return f"{base}:{int(port) + rank}"
