"""Runs models with OpenVINO as Triton's OpenVINO backend does: the config's inputs and
outputs checked against the model, element types set by the config, a batching model
compiled with a static batch of max_batch_size (smaller batches are an error unless
ENABLE_BATCH_PADDING pads them with zeros), one compiled model per device shared by the
instances, each instance with its own infer request.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from openvino.preprocess import PrePostProcessor
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.base import BackendInstance, BackendModel, InstanceSpec, ModelSpec
from llmserve.backends.openvino.settings import OpenVinoSettings, parse_settings
from llmserve.core.errors import InternalError, InvalidArgument, Unavailable
from llmserve.repository import model_file_path
from llmserve.scheduling.batching import concat_inputs, run_and_respond, split_outputs
from llmserve.scheduling.request import SchedRequest

log = logging.getLogger(__name__)

# config data types OpenVINO has an element type for (Triton's OpenVINO backend's table)
ELEMENT_TYPES = {
    "TYPE_BOOL": ov.Type.boolean, "TYPE_UINT8": ov.Type.u8, "TYPE_UINT16": ov.Type.u16,
    "TYPE_UINT32": ov.Type.u32, "TYPE_UINT64": ov.Type.u64, "TYPE_INT8": ov.Type.i8,
    "TYPE_INT16": ov.Type.i16, "TYPE_INT32": ov.Type.i32, "TYPE_INT64": ov.Type.i64,
    "TYPE_FP16": ov.Type.f16, "TYPE_FP32": ov.Type.f32, "TYPE_FP64": ov.Type.f64,
}


def load_model(spec: ModelSpec) -> OpenVinoModel:
    return OpenVinoModel(spec)


class OpenVinoModel(BackendModel):
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.config = spec.config
        self.name = spec.name
        self.settings: OpenVinoSettings = parse_settings(self.config)
        self.core = ov.Core()
        if self.settings.cpu_extension_path:
            try:
                self.core.add_extension(self.settings.cpu_extension_path)
            except Exception as e:
                raise Unavailable(f"unable to load model '{self.name}': loading custom CPU "
                                  f"extensions: {e}") from None
        self.path: Path = model_file_path(spec.model_dir, spec.version, self.config)
        try:
            model = self.core.read_model(str(self.path))
        except Exception as e:
            raise Unavailable(f"unable to load model '{self.name}': OpenVINO cannot read "
                              f"{self.path}: {e}") from None
        self.model = self._configure(model)
        self._compiled: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- configuration ------------------------------------------------------------------
    def _configure(self, model: Any) -> Any:
        batch = self.config.max_batch_size
        ppp = PrePostProcessor(model)
        inputs = {p.get_any_name(): p for p in model.inputs}
        for cfg in self.config.input:
            port = _port(inputs, cfg.name, "input", self.name)
            ppp.input(cfg.name).tensor().set_element_type(_element(cfg, "input", self.name))
            dims = list(cfg.reshape.shape) if cfg.HasField("reshape") else list(cfg.dims)
            shape = port.get_partial_shape()
            if self.settings.reshape_io_layers:
                shape = _reshaped(shape, dims, batch, self.name, cfg.name)
                ppp.input(cfg.name).tensor().set_shape(shape)
            else:
                _compare_dims(self.name, cfg.name, shape, dims, batch, exact=False)
            if batch:
                ppp.input(cfg.name).tensor().set_layout(ov.Layout("N..."))
        model = _build(ppp, self.name, "input")
        if batch:
            try:
                ov.set_batch(model, batch)
            except Exception as e:
                raise InvalidArgument(f"model '{self.name}': setting max batch size: {e}") from None
        ppp = PrePostProcessor(model)
        outputs = {name: p for p in model.outputs for name in p.get_names()}
        for cfg in self.config.output:
            port = _port(outputs, cfg.name, "output", self.name)
            ppp.output(cfg.name).tensor().set_element_type(_element(cfg, "output", self.name))
            dims = list(cfg.reshape.shape) if cfg.HasField("reshape") else list(cfg.dims)
            _compare_dims(self.name, cfg.name, port.get_partial_shape(), dims, batch, exact=True)
        return _build(ppp, self.name, "output")

    def compiled(self, device: str) -> Any:
        """The model compiled for `device`, once, shared by the instances on it."""
        with self._lock:
            if device not in self._compiled:
                properties = dict(self.settings.compile_properties)
                if self.config.max_batch_size and not self.settings.skip_dynamic_batchsize:
                    properties["ALLOW_AUTO_BATCHING"] = "YES"
                try:
                    self._compiled[device] = self.core.compile_model(self.model, device,
                                                                     properties)
                except Exception as e:
                    raise Unavailable(f"unable to load model '{self.name}': OpenVINO cannot "
                                      f"compile it for {device}: {e}") from None
                log.info("model '%s': compiled for OpenVINO device %s (%s)", self.name, device,
                         ", ".join(f"{k}={v}" for k, v in properties.items()) or "defaults")
            return self._compiled[device]

    def create_instance(self, instance: InstanceSpec) -> BackendInstance:
        return OpenVinoInstance(self, instance)

    def unload(self) -> None:
        self._compiled.clear()


class OpenVinoInstance(BackendInstance):
    def __init__(self, model: OpenVinoModel, instance: InstanceSpec):
        self.model = model
        self.config = model.config
        self.name = model.name
        self.request = model.compiled(model.settings.target_device).create_infer_request()
        self.output_dtypes = {o.name: mc.DataType.Name(o.data_type) for o in self.config.output}

    def execute(self, batch: list[SchedRequest]) -> concurrent.futures.Future | None:
        run_and_respond(self.name, batch, self._run,
                        {n: t[len("TYPE_"):] for n, t in self.output_dtypes.items()})
        return None

    def _run(self, live: list[SchedRequest]) -> list[dict[str, np.ndarray]]:
        max_batch = self.config.max_batch_size
        total = sum(r.batch_size for r in live)
        pad = 0
        if max_batch > 0 and total != max_batch:
            if not self.model.settings.enable_batch_padding:
                raise InternalError(
                    f"expected requests with batch size '{max_batch}', got '{total}'... this "
                    "error can be avoided by setting 'ENABLE_BATCH_PADDING' parameter in model "
                    "configuration to 'YES' at a performance cost.")
            pad = max_batch - total
        feeds = concat_inputs(self.config, live)
        if pad:
            feeds = {n: np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])
                     for n, a in feeds.items()}
        try:
            results = self.request.infer(feeds)
        except Exception as e:
            log.error("model '%s': OpenVINO inference failed: %s", self.name, e)
            raise InternalError(f"openvino error: {e}") from None
        by_name = {name: np.array(value) for port, value in results.items()
                   for name in port.get_names()}
        outputs = {o.name: by_name[o.name][: max_batch - pad] if max_batch else by_name[o.name]
                   for o in self.config.output}
        return split_outputs(self.config, live, outputs)

    def finalize(self) -> None:
        self.request = None


# -- helpers ------------------------------------------------------------------------------
def _port(ports: dict[str, Any], name: str, kind: str, model: str) -> Any:
    if name not in ports:
        raise InvalidArgument(f"model '{model}': unexpected inference {kind} '{name}', allowed "
                              f"{kind}s are: {', '.join(sorted(ports))}")
    return ports[name]


def _element(cfg: Any, kind: str, model: str) -> Any:
    name = mc.DataType.Name(cfg.data_type)
    if name not in ELEMENT_TYPES:
        raise InvalidArgument(f"unsupported datatype {name} for {kind} '{cfg.name}' for model "
                              f"'{model}'")
    return ELEMENT_TYPES[name]


def _build(ppp: Any, model: str, kind: str) -> Any:
    try:
        return ppp.build()
    except Exception as e:
        raise InvalidArgument(f"model '{model}': apply model {kind} preprocessing: {e}") from None


def _matches(dim: Any, want: int) -> bool:
    """Triton's doesMatch: a static dimension equals the config's; a dynamic one matches
    anything unless it has an upper bound."""
    if dim.is_static:
        return dim.get_length() == want
    if dim.get_max_length() < 0:  # no upper bound
        return True
    return dim.get_min_length() < want < dim.get_max_length()


def _compare_dims(model: str, tensor: str, shape: Any, dims: list[int], max_batch: int,
                  *, exact: bool) -> None:
    """Triton's CompareDimsSupported: the model's shape against [max_batch] + dims (the
    batch dimension and -1 dims compared only for outputs)."""
    full = [max_batch, *dims] if max_batch > 0 else list(dims)
    if max_batch > 0 and len(shape) == 0:
        raise InvalidArgument(f"model '{model}', tensor '{tensor}': for the model to support "
                              "batching the shape should have at least 1 dimension")
    ok = len(shape) == len(full)
    if ok:
        for i, want in enumerate(full):
            if max_batch <= 0 or exact or (i != 0 and want != -1):
                ok = ok and _matches(shape[i], want)
    if not ok:
        model_shape = [d.get_length() if d.is_static else -1 for d in shape]
        extra = (" (an initial batch dimension because max_batch_size > 0 followed by the "
                 f"explicit tensor shape, making complete shape {full})") if max_batch > 0 else \
            f" (shape {full})"
        raise InvalidArgument(
            f"model '{model}', tensor '{tensor}': the model expects {len(shape)} dimensions "
            f"(shape {model_shape}) but the model configuration specifies {len(full)} "
            f"dimensions{extra}")


def _reshaped(shape: Any, dims: list[int], max_batch: int, model: str, tensor: str) -> Any:
    """RESHAPE_IO_LAYERS: the model's input takes the config's dims (-1 dynamic)."""
    out = ov.PartialShape(shape)
    start = 1 if max_batch else 0
    if len(out) < start + len(dims):
        raise InvalidArgument(f"model '{model}', tensor '{tensor}': cannot reshape a "
                              f"{len(out)}-dimensional input to dims {dims}")
    for i, d in enumerate(dims, start):
        if d > 0:
            out[i] = ov.Dimension(d)
        elif d == -1:
            out[i] = ov.Dimension()
        else:
            raise InvalidArgument("openvino backend does not support dimensions values other "
                                  "than `-1` or positive integers")
    return out
