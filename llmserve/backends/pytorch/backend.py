"""The pytorch backend (platform pytorch_libtorch): a TorchScript model.pt per instance on
the instance's device, Triton's PyTorch parameters, batched forward() under
torch.inference_mode with inputs/outputs mapped by io_mapping.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.base import BackendInstance, BackendModel, InstanceSpec, ModelSpec
from llmserve.backends.pytorch.io_mapping import (
    CONFIG_TYPE_OF,
    TORCH_TYPES,
    IOMapping,
    Naming,
    flatten_outputs,
    map_io,
)
from llmserve.core import datatypes
from llmserve.core.booleans import bool_word
from llmserve.core.errors import InternalError, InvalidArgument, ServerError, Unavailable
from llmserve.repository import model_file_path
from llmserve.scheduling.batching import concat_inputs, run_and_respond, split_outputs
from llmserve.scheduling.request import SchedRequest
from llmserve.scheduling.sequence_controls import sequence_input_types, state_output_types

log = logging.getLogger(__name__)

_BOOL_PARAMS = {"INFERENCE_MODE": True, "DISABLE_OPTIMIZED_EXECUTION": False,
                "ENABLE_WEIGHT_SHARING": False, "ENABLE_CACHE_CLEANING": False,
                "DISABLE_CUDNN": False, "ENABLE_JIT_EXECUTOR": None,
                "ENABLE_JIT_PROFILING": None}
_INT_PARAMS = {"INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"}
_IGNORED_PARAMS = {"ENABLE_NVFUSER", "ENABLE_TENSOR_FUSER"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_parameters(config: mc.ModelConfig) -> dict[str, Any]:
    """Triton's PyTorch backend parameters (booleans and thread counts) with defaults."""
    params: dict[str, Any] = dict(_BOOL_PARAMS)
    for key, value in sorted(config.parameters.items()):
        text = value.string_value.strip()
        if key in _BOOL_PARAMS:
            parsed = bool_word(text)
            if parsed is None:
                raise InvalidArgument(f"unable to load model '{config.name}': parameter "
                                      f"'{key}' expects true or false, got '{text}'")
            params[key] = parsed
        elif key in _INT_PARAMS:
            try:
                params[key] = int(text)
            except ValueError:
                raise InvalidArgument(f"unable to load model '{config.name}': parameter "
                                      f"'{key}' expects an integer, got '{text}'") from None
        elif key in _IGNORED_PARAMS:
            log.warning("model '%s': parameter %s is accepted but not applied (fusers are "
                        "chosen by this PyTorch build)", config.name, key)
        else:
            log.warning("model '%s': parameter '%s' is not used by the pytorch backend",
                        config.name, key)
    return params


def _apply_process_settings(name: str, params: dict[str, Any]) -> None:
    """Settings that are process-wide in PyTorch (and in Triton's backend too)."""
    intra = params.get("INTRA_OP_THREAD_COUNT")
    if intra is not None and intra > 0:
        log.warning("model '%s': INTRA_OP_THREAD_COUNT=%d sets torch's thread count for the "
                    "whole server process", name, intra)
        torch.set_num_threads(intra)
    inter = params.get("INTER_OP_THREAD_COUNT")
    if inter is not None and inter > 0:
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError as e:  # allowed only before the first inter-op parallel work
            log.warning("model '%s': INTER_OP_THREAD_COUNT not applied: %s", name, e)
    if params["DISABLE_CUDNN"]:
        log.warning("model '%s': DISABLE_CUDNN turns cuDNN off for the whole server process",
                    name)
        torch.backends.cudnn.enabled = False
    if params["ENABLE_JIT_EXECUTOR"] is not None:
        torch._C._jit_set_profiling_executor(params["ENABLE_JIT_EXECUTOR"])
    if params["ENABLE_JIT_PROFILING"] is not None:
        torch._C._jit_set_profiling_mode(params["ENABLE_JIT_PROFILING"])


def instance_device(name: str, instance: InstanceSpec) -> torch.device:
    if instance.kind == "KIND_GPU":
        if not torch.cuda.is_available() or instance.device_id >= torch.cuda.device_count():
            raise Unavailable(f"unable to load model '{name}': instance {instance.name} asks for "
                              f"GPU {instance.device_id}, which torch cannot use")
        return torch.device("cuda", instance.device_id)
    return torch.device("cpu")


class TorchModel(BackendModel):
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.config = spec.config
        self.path: Path = model_file_path(spec.model_dir, spec.version, spec.config)
        self.params = parse_parameters(spec.config)
        _apply_process_settings(spec.name, self.params)
        self._shared: dict[str, tuple[Any, IOMapping]] = {}
        self._lock = threading.Lock()

    def load_module(self, device: torch.device) -> tuple[Any, IOMapping]:
        """The TorchScript module on `device` and its IO mapping; one per device when
        ENABLE_WEIGHT_SHARING, else a fresh copy per instance (Triton's default)."""
        share = self.params["ENABLE_WEIGHT_SHARING"]
        with self._lock:
            if share and str(device) in self._shared:
                return self._shared[str(device)]
            try:
                module = torch.jit.load(str(self.path), map_location=device)
            except Exception as e:  # torch raises RuntimeError/ValueError for bad archives
                raise Unavailable(f"unable to load model '{self.spec.name}': failed to load "
                                  f"TorchScript model {self.path}: {_first_line(e)}") from None
            module.eval()
            if not hasattr(module, "forward"):
                raise Unavailable(f"unable to load model '{self.spec.name}': {self.path} has no "
                                  "forward() method")
            loaded = (module, map_io(self.config, module))
            if share:
                self._shared[str(device)] = loaded
            return loaded

    def create_instance(self, instance: InstanceSpec) -> BackendInstance:
        return TorchInstance(self, instance)

    def unload(self) -> None:
        self._shared.clear()


def load_model(spec: ModelSpec) -> TorchModel:
    return TorchModel(spec)


class TorchInstance(BackendInstance):
    def __init__(self, model: TorchModel, instance: InstanceSpec):
        self.name = model.spec.name
        self.config = model.config
        self.instance = instance
        self.device = instance_device(self.name, instance)
        self.module, self.io = model.load_module(self.device)
        params = model.params
        self.inference_mode = params["INFERENCE_MODE"]
        self.optimize = not params["DISABLE_OPTIMIZED_EXECUTION"]
        self.clean_cache = params["ENABLE_CACHE_CLEANING"] and self.device.type == "cuda"
        self.output_types = {t.name: mc.DataType.Name(t.data_type) for t in self.config.output}
        # implicit state outputs are always read; they feed the sequence's next request
        states = state_output_types(self.config)
        self.state_outputs = set(states)
        # BF16 arrives as float32 values (numpy has no bfloat16): cast on the way in
        types = {t.name: mc.DataType.Name(t.data_type) for t in self.config.input}
        types.update(sequence_input_types(self.config))
        self.input_types = {n: TORCH_TYPES.get(t) for n, t in types.items()}
        self.output_order = [t.name for t in self.config.output]
        self.output_order += [n for n in states if n not in self.output_types]
        self.output_types.update(states)
        log.info("model '%s': instance %s on %s, inputs by %s, outputs by %s", self.name,
                 instance.name, self.device, self.io.input_naming.value,
                 self.io.output_naming.value)

    def execute(self, batch: list[SchedRequest]) -> concurrent.futures.Future | None:
        run_and_respond(self.name, batch, self._run_checked,
                        {n: datatypes.config_to_api(t) for n, t in self.output_types.items()})
        return None

    def _run_checked(self, live: list[SchedRequest]) -> list[dict[str, np.ndarray]]:
        try:
            return self._run(live)
        except ServerError:
            raise
        except Exception as e:  # TorchScript raises RuntimeError (torch.jit.Error) from forward
            log.error("model '%s': forward() failed: %s", self.name, e)
            raise InternalError(f"PyTorch execute failure: {_first_line(e)}") from None

    def _to_tensor(self, name: str, array: np.ndarray) -> torch.Tensor:
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, copy=True, order="C")
        return torch.from_numpy(array).to(device=self.device, dtype=self.input_types.get(name))

    def _forward(self, tensors: dict[str, torch.Tensor]) -> Any:
        grad = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with grad, torch.jit.optimized_execution(self.optimize):
            if self.io.input_naming == Naming.DICT:
                return self.module(tensors)
            args: list[torch.Tensor | None] = [None] * self.io.num_inputs
            for name, tensor in tensors.items():
                args[self.io.input_index[name]] = tensor
            return self.module(*args)

    def _run(self, live: list[SchedRequest]) -> list[dict[str, np.ndarray]]:
        tensors = {n: self._to_tensor(n, a) for n, a in concat_inputs(self.config, live).items()}
        outs = flatten_outputs(self._forward(tensors), self.name)
        wanted = {n for sreq in live for n in sreq.output_names} | self.state_outputs
        outputs: dict[str, np.ndarray] = {}
        for name in (n for n in self.output_order if n in wanted):
            index = self.io.output_index[name]
            if index >= len(outs):
                raise InternalError(f"output '{name}' of model '{self.name}' is output {index} "
                                    f"of forward(), which returned {len(outs)} tensor(s)")
            tensor = outs[index]
            expected = self.output_types[name]
            if tensor.dtype != TORCH_TYPES[expected]:
                got = CONFIG_TYPE_OF.get(tensor.dtype, str(tensor.dtype))
                raise InternalError(f"unexpected datatype {got} for inference output '{name}' "
                                    f"of model '{self.name}', expecting {expected}")
            if tensor.dtype == torch.bfloat16:  # held as float32 values, as BF16 is everywhere
                tensor = tensor.float()
            outputs[name] = tensor.detach().cpu().contiguous().numpy()
        if self.clean_cache:
            with contextlib.suppress(RuntimeError):
                torch.cuda.empty_cache()
        return split_outputs(self.config, live, outputs)

    def finalize(self) -> None:
        self.module = None
