"""Runs TensorFlow models as Triton's TensorFlow backend does: the config's inputs and
outputs checked against the model (SavedModel: names, data types and dims of the
signature; GraphDef: Placeholders and nodes), batches concatenated and split, BYTES
tensors as TensorFlow strings, the backend's parameters read from the config."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.base import BackendInstance, BackendModel, InstanceSpec, ModelSpec
from llmserve.backends.tensorflow.graph import (
    SessionSettings,
    TfModel,
    TfTensor,
    open_model,
    read_init_ops,
)
from llmserve.core.booleans import bool_word
from llmserve.core.errors import InternalError, InvalidArgument
from llmserve.repository import model_file_path
from llmserve.scheduling.batching import concat_inputs, run_and_respond, split_outputs
from llmserve.scheduling.request import SchedRequest

log = logging.getLogger(__name__)


def load_model(spec: ModelSpec) -> TensorFlowModel:
    return TensorFlowModel(spec)


def _param(config: mc.ModelConfig, key: str) -> str:
    return config.parameters[key].string_value if key in config.parameters else ""


def _count(config: mc.ModelConfig, key: str, default: int) -> int:
    value = _param(config, key)
    if not value:
        return default
    if not value.isdigit():
        raise InvalidArgument(f"model '{config.name}': parameter '{key}' should be a "
                              f"non-negative number, got '{value}'")
    return int(value)


class TensorFlowModel(BackendModel):
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.config = spec.config
        self.name = spec.name
        self.path: Path = model_file_path(spec.model_dir, spec.version, self.config)
        self.settings = SessionSettings(
            intra_threads=_count(self.config, "TF_NUM_INTRA_THREADS", 0),
            inter_threads=_count(self.config, "TF_NUM_INTER_THREADS", 0),
            per_session_threads=bool_word(_param(self.config,
                                                 "TF_USE_PER_SESSION_THREADS")) is True,
            graph_tag=_param(self.config, "TF_GRAPH_TAG"),
            signature_def=_param(self.config, "TF_SIGNATURE_DEF"))
        self.share_count = max(1, _count(self.config, "MAX_SESSION_SHARE_COUNT", 1))
        init_file = _param(self.config, "TF_INIT_OPS_FILE")
        self.init_ops = (read_init_ops(spec.model_dir, spec.version, init_file, self.name)
                         if init_file else None)
        self._sessions: list[tuple[TfModel, int]] = []  # (session, instances using it)
        self._lock = threading.Lock()

    def session(self) -> TfModel:
        """A session for a new instance: shared by up to MAX_SESSION_SHARE_COUNT instances."""
        with self._lock:
            for i, (model, users) in enumerate(self._sessions):
                if users < self.share_count:
                    self._sessions[i] = (model, users + 1)
                    return model
            model = open_model(self.path, self.name, self.settings, self.init_ops)
            _check_io(self.config, model)
            self._sessions.append((model, 1))
            return model

    def create_instance(self, instance: InstanceSpec) -> BackendInstance:
        return TensorFlowInstance(self, instance)

    def unload(self) -> None:
        with self._lock:
            for model, _ in self._sessions:
                model.session.close()
            self._sessions.clear()


class TensorFlowInstance(BackendInstance):
    def __init__(self, model: TensorFlowModel, instance: InstanceSpec):
        self.config = model.config
        self.name = model.name
        self.model = model.session()
        self.output_types = {o.name: mc.DataType.Name(o.data_type) for o in self.config.output}
        self.output_order = [o.name for o in self.config.output]

    def execute(self, batch: list[SchedRequest]) -> concurrent.futures.Future | None:
        run_and_respond(self.name, batch, self._run,
                        {n: _api_name(t) for n, t in self.output_types.items()})
        return None

    def _run(self, live: list[SchedRequest]) -> list[dict[str, np.ndarray]]:
        feeds = {self.model.inputs[name].tensor: array
                 for name, array in concat_inputs(self.config, live).items()}
        wanted = {n for sreq in live for n in sreq.output_names}
        names = [n for n in self.output_order if n in wanted]
        try:
            arrays = self.model.session.run([self.model.outputs[n].tensor for n in names], feeds)
        except Exception as e:
            log.error("model '%s': TensorFlow run failed: %s", self.name, e)
            raise InternalError(f"tensorflow error: {e}") from None
        outputs = {n: _output(self.name, n, self.output_types[n], np.asarray(a))
                   for n, a in zip(names, arrays, strict=True)}
        return split_outputs(self.config, live, outputs)


def _api_name(type_name: str) -> str:
    return "BYTES" if type_name == "TYPE_STRING" else type_name[len("TYPE_"):]


def _output(model: str, name: str, type_name: str, array: np.ndarray) -> np.ndarray:
    if type_name == "TYPE_STRING":
        return array.astype(np.object_)
    from llmserve.core import datatypes

    want = datatypes.from_config_name(type_name).numpy
    if array.dtype != want:
        raise InternalError(f"unexpected datatype {array.dtype} for inference output '{name}' "
                            f"of model '{model}', expecting {type_name}")
    return array


def _check_io(config: mc.ModelConfig, model: TfModel) -> None:
    """Every configured input and output exists in the model; for a SavedModel, its data
    type and dims agree (the batch dimension counted when max_batch_size > 0)."""
    for kind, cfgs, found in (("input", config.input, model.inputs),
                              ("output", config.output, model.outputs)):
        for cfg in cfgs:
            tensor = found.get(cfg.name)
            if tensor is None and model.is_graphdef and kind == "output":
                raise InvalidArgument(f"unexpected inference output '{cfg.name}': the graph "
                                      f"has no node '{cfg.name}'")
            if tensor is None:
                raise InvalidArgument(f"unexpected inference {kind} '{cfg.name}', allowed "
                                      f"{kind}s are: {', '.join(sorted(found))}")
            _check_tensor(config, cfg, tensor, kind)


def _check_tensor(config: mc.ModelConfig, cfg: mc.ModelInput | mc.ModelOutput,
                  tensor: TfTensor, kind: str) -> None:
    want = mc.DataType.Name(cfg.data_type)
    if tensor.data_type is not None and tensor.data_type != want:
        raise InvalidArgument(f"unable to load model '{config.name}', configuration expects "
                              f"datatype {want} for {kind} '{cfg.name}', model provides "
                              f"{tensor.data_type}")
    if tensor.shape is None:
        return
    dims = list(cfg.reshape.shape) if cfg.HasField("reshape") else list(cfg.dims)
    full = ([-1] if config.max_batch_size > 0 else []) + dims
    ok = len(full) == len(tensor.shape) and all(
        m == -1 or c == -1 or m == c for m, c in zip(tensor.shape, full, strict=True))
    if not ok:
        raise InvalidArgument(
            f"unable to load model '{config.name}', {kind} '{cfg.name}' dims {tensor.shape} "
            f"don't match configuration dims {full}")
