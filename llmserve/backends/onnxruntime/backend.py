"""The onnxruntime backend: one ONNX Runtime session per instance, config checked against
the model at load, batches concatenated along the batch dimension and split back, BYTES
tensors as UTF-8 strings, output data types checked against the config.
"""

from __future__ import annotations

import concurrent.futures
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.base import BackendInstance, BackendModel, InstanceSpec, ModelSpec
from llmserve.backends.onnxruntime.model_check import check_model_io
from llmserve.backends.onnxruntime.session import session_settings
from llmserve.config.autocomplete_onnx import tensor_infos
from llmserve.core import datatypes
from llmserve.core.errors import InternalError, InvalidArgument, Unavailable
from llmserve.repository import model_file_path
from llmserve.scheduling.batching import concat_inputs, run_and_respond, split_outputs
from llmserve.scheduling.request import SchedRequest
from llmserve.scheduling.sequence_controls import sequence_input_types, state_output_types

log = logging.getLogger(__name__)


def _dtype_name(data_type: int) -> str:
    return mc.DataType.Name(data_type)


class OnnxModel(BackendModel):
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.config = spec.config
        self.path: Path = model_file_path(spec.model_dir, spec.version, spec.config)

    def create_instance(self, instance: InstanceSpec) -> BackendInstance:
        return OnnxInstance(self, instance)


def load_model(spec: ModelSpec) -> OnnxModel:
    return OnnxModel(spec)


class OnnxInstance(BackendInstance):
    def __init__(self, model: OnnxModel, instance: InstanceSpec):
        self.config = model.config
        self.name = model.spec.name
        self.instance = instance
        settings = session_settings(model.config, instance.kind, instance.device_id)
        self.run_options = settings.run_options
        try:
            self.session = ort.InferenceSession(str(model.path), sess_options=settings.options,
                                                providers=settings.providers)
        except Exception as e:  # onnxruntime's pybind exceptions share no useful base class
            raise Unavailable(f"unable to load model '{self.name}': ONNX Runtime cannot load "
                              f"{model.path}: {e}") from None
        check_model_io(self.config, tensor_infos(self.session.get_inputs()),
                       tensor_infos(self.session.get_overridable_initializers()),
                       tensor_infos(self.session.get_outputs()))
        self.input_dtypes = {t.name: datatypes.from_config_name(_dtype_name(t.data_type))
                             for t in self.config.input}
        self.output_dtypes = {t.name: datatypes.from_config_name(_dtype_name(t.data_type))
                              for t in self.config.output}
        # the sequence batcher's control and state inputs; state outputs are always
        # fetched, they feed the sequence's next request
        self.input_dtypes.update({n: datatypes.from_config_name(t)
                                  for n, t in sequence_input_types(self.config).items()})
        states = state_output_types(self.config)
        self.state_outputs = list(states)
        self.output_order = [t.name for t in self.config.output]
        self.output_order += [n for n in states if n not in self.output_dtypes]
        self.output_dtypes.update({n: datatypes.from_config_name(t) for n, t in states.items()})
        log.info("model '%s': instance %s runs on %s (%s)", self.name, instance.name,
                 settings.device, ", ".join(self.session.get_providers()))

    # -- execute ------------------------------------------------------------------------
    def execute(self, batch: list[SchedRequest]) -> concurrent.futures.Future | None:
        run_and_respond(self.name, batch, self._run,
                        {n: d.api_name for n, d in self.output_dtypes.items()})
        return None

    def _run(self, live: list[SchedRequest]) -> list[dict[str, np.ndarray]]:
        feeds = {name: self._to_feed(name, array)
                 for name, array in concat_inputs(self.config, live).items()}
        wanted = {n for sreq in live for n in sreq.output_names} | set(self.state_outputs)
        names = [n for n in self.output_order if n in wanted]
        try:
            arrays = self.session.run(names, feeds, self.run_options)
        except ort_state.InvalidArgument as e:
            raise InvalidArgument(f"onnx runtime error: {e}") from None
        except Exception as e:
            log.error("model '%s': ONNX Runtime run failed: %s", self.name, e)
            raise InternalError(f"onnx runtime error: {e}") from None
        outputs = {n: self._from_output(n, a) for n, a in zip(names, arrays, strict=True)}
        return split_outputs(self.config, live, outputs)

    def _to_feed(self, name: str, array: np.ndarray) -> np.ndarray:
        dtype = self.input_dtypes[name]
        if dtype.api_name != "BYTES":
            return np.ascontiguousarray(array, dtype=dtype.numpy)
        # onnxruntime's Python API takes text for string tensors (bytes would be str()-ed)
        flat = np.asarray(array, dtype=np.object_).reshape(-1)
        text = np.empty(flat.shape, dtype=np.object_)
        for i, item in enumerate(flat):
            if isinstance(item, (bytes, bytearray)):
                try:
                    item = bytes(item).decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidArgument(
                        f"input '{name}' of model '{self.name}' holds bytes that are not valid "
                        "UTF-8; ONNX Runtime string tensors carry text") from None
            text[i] = item if isinstance(item, str) else str(item)
        return text.reshape(array.shape)

    def _from_output(self, name: str, array: np.ndarray) -> np.ndarray:
        dtype = self.output_dtypes[name]
        array = np.asarray(array)
        if dtype.api_name == "BYTES":
            if array.dtype.kind not in ("O", "U", "S"):
                raise self._wrong_type(name, array.dtype)
            flat = array.reshape(-1)
            out = np.empty(flat.shape, dtype=np.object_)
            for i, item in enumerate(flat):
                out[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            return out.reshape(array.shape)
        if array.dtype != dtype.numpy:
            raise self._wrong_type(name, array.dtype)
        return array

    def _wrong_type(self, name: str, got: np.dtype) -> InternalError:
        expected = datatypes.api_to_config(self.output_dtypes[name].api_name)
        return InternalError(f"unexpected datatype {got} for inference output '{name}' of model "
                             f"'{self.name}', expecting {expected}")

    def finalize(self) -> None:
        self.session = None
