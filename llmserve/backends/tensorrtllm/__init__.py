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
        self.model.load()

    def create_instance(self, instance: InstanceSpec) -> BackendInstance:
        return _Instance(self.model)

    def unload(self) -> None:
        self.model.unload()


def load_model(spec: ModelSpec) -> BackendModel:
    """Load one tensorrt_llm model version: read its parameters, start the executor."""
    return _Model(spec)
