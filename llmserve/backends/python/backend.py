"""The Python backend's in-process mode: the model imported into the server (with a
private module table, loader.py) and each instance's TritonPythonModel run on the
instance's worker thread (runner.py).
"""

from __future__ import annotations

import concurrent.futures
import logging

from llmserve.backends.base import BackendInstance, BackendModel, InstanceSpec, ModelSpec
from llmserve.backends.python import context
from llmserve.backends.python.loader import import_model_module
from llmserve.backends.python.request import InferenceRequest
from llmserve.backends.python.response import InferenceResponse, deliver
from llmserve.backends.python.response_rules import ExecuteRules, last_traceback_line
from llmserve.backends.python.runner import ModelInitError, ModelRunner
from llmserve.backends.python.stub_settings import execution_mode, settings_of
from llmserve.core.errors import ServerError, Unavailable
from llmserve.repository import model_file_path
from llmserve.scheduling.request import SchedRequest

log = logging.getLogger(__name__)


class PythonModel(BackendModel):
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        path = model_file_path(spec.model_dir, spec.version, spec.config)
        ctx = context.ModelContext(spec.server, spec.name)
        token = context.enter(ctx)
        try:
            self.module = import_model_module(path, spec.name, spec.version)
        except Exception as exc:
            raise Unavailable(last_traceback_line(exc)) from exc
        finally:
            context.leave(token)
        if not hasattr(self.module, "TritonPythonModel"):
            raise Unavailable(f"{path.name} of model '{spec.name}' defines no class TritonPythonModel")

    def create_instance(self, instance: InstanceSpec) -> BackendInstance:
        return PythonInstance(self, instance)


def load_model(spec: ModelSpec) -> BackendModel:
    """In a stub process per instance (Triton's way, the default) or in-process, as the
    model's PYTHON_EXECUTION_MODE parameter or the server's default chooses."""
    if execution_mode(spec.config, settings_of(spec.options)) == "stub":
        from llmserve.backends.python.stub_backend import StubModel

        return StubModel(spec)
    return PythonModel(spec)


class PythonInstance(BackendInstance):
    """An instance on a thread of the server (in-process mode)."""

    def __init__(self, model: PythonModel, instance: InstanceSpec):
        spec = model.spec
        self.spec = spec
        self.instance = instance
        self.decoupled = spec.decoupled
        try:
            self.runner = ModelRunner(model.module, spec.server, execute_rules(spec, instance),
                                      initialize_args(spec, instance))
        except ModelInitError as exc:
            raise Unavailable(str(exc)) from exc

    @property
    def obj(self) -> object:
        """The model's TritonPythonModel object."""
        return self.runner.obj

    def execute(self, batch: list[SchedRequest]) -> concurrent.futures.Future | None:
        for sreq in batch:
            sreq.backend_state.setdefault("decoupled", self.decoupled)
        pb_requests = [InferenceRequest._from_sched(s) for s in batch]
        return self.runner.execute(pb_requests, [_SchedSlot(s) for s in batch],
                                   tuple(s.request.cancel for s in batch))

    def is_ready(self) -> bool:
        return self.runner.is_ready()

    def finalize(self) -> None:
        self.runner.finalize()


def execute_rules(spec: ModelSpec, instance: InstanceSpec) -> ExecuteRules:
    iterative = (spec.config.HasField("sequence_batching")
                 and spec.config.sequence_batching.iterative_sequence)
    return ExecuteRules(spec.name, instance.name, spec.decoupled, iterative)


def initialize_args(spec: ModelSpec, instance: InstanceSpec) -> dict[str, str]:
    """The args dict initialize() receives."""
    return {
        "model_config": spec.config_json,
        "model_instance_kind": instance.kind.removeprefix("KIND_"),
        "model_instance_name": instance.name,
        "model_instance_device_id": str(instance.device_id),
        "model_repository": str(spec.model_dir),
        "model_version": str(spec.version),
        "model_name": spec.name,
    }


class _SchedSlot:
    """A request of the batch, for the response rules."""

    __slots__ = ("sreq",)

    def __init__(self, sreq: SchedRequest):
        self.sreq = sreq

    @property
    def closed(self) -> bool:
        return self.sreq.sink.closed

    @property
    def has_sender(self) -> bool:
        return self.sreq.backend_state.get("sender") is not None

    def fail(self, error: ServerError) -> None:
        self.sreq.fail(error)

    def respond(self, response: InferenceResponse) -> None:
        deliver(self.sreq, response, True)

    def reschedule(self) -> None:
        if self.sreq.requeue is not None:
            self.sreq.requeue(self.sreq)
