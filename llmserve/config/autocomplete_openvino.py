"""Backend-side auto-complete for OpenVINO models, as Triton's OpenVINO backend does it:
batching only when every input and output's layout has a batch dimension (then an unset
max_batch_size becomes default-max-batch-size, at least 1, and dynamic batching is switched
on), and inputs/outputs filled from the model when the config lists none."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config.errors import ConfigError

log = logging.getLogger(__name__)

# OpenVINO element type names -> config data types
_OV_TYPES = {
    "boolean": "TYPE_BOOL", "u8": "TYPE_UINT8", "u16": "TYPE_UINT16", "u32": "TYPE_UINT32",
    "u64": "TYPE_UINT64", "i8": "TYPE_INT8", "i16": "TYPE_INT16", "i32": "TYPE_INT32",
    "i64": "TYPE_INT64", "f16": "TYPE_FP16", "f32": "TYPE_FP32", "f64": "TYPE_FP64",
}


def run_openvino_auto_complete(config: mc.ModelConfig, model_file: Path,
                               default_batch: int) -> None:
    if importlib.util.find_spec("openvino") is None:
        log.warning("model '%s': openvino is not installed, so its inputs, outputs and "
                    "max_batch_size cannot be read from %s (auto-complete not applied)",
                    config.name, model_file)
        return
    import openvino as ov

    try:
        model = ov.Core().read_model(str(model_file))
    except Exception as e:
        raise ConfigError(f"{model_file}: unable to auto-complete the configuration: OpenVINO "
                          f"cannot read the model: {e}") from None
    ports = list(model.inputs) + list(model.outputs)
    batching = all(ov.layout_helpers.has_batch(ov.layout_helpers.get_layout(p)) for p in ports)
    if batching:
        if config.max_batch_size == 0:
            config.max_batch_size = max(default_batch, 1)
            log.warning("autofilled max_batch_size to %d for model '%s' since batching is "
                        "supported but no max_batch_size is specified in model configuration",
                        config.max_batch_size, config.name)
        if config.max_batch_size > 1 and not (config.HasField("dynamic_batching")
                                              or config.HasField("sequence_batching")):
            config.dynamic_batching.SetInParent()
    elif config.max_batch_size != 0:
        log.warning("model layout for model %s does not support batching while non-zero "
                    "max_batch_size is specified", config.name)
    if len(config.input) == 0:
        for port in model.inputs:
            _fill(config.input.add(), port, config, model_file)
    if len(config.output) == 0:
        for port in model.outputs:
            _fill(config.output.add(), port, config, model_file)


def _fill(tensor: Any, port: Any, config: mc.ModelConfig, model_file: Path) -> None:
    element = port.get_element_type().get_type_name()
    if element not in _OV_TYPES:
        raise ConfigError(f"{model_file}: unable to auto-complete tensor "
                          f"'{port.get_any_name()}' of model '{config.name}': OpenVINO type "
                          f"{element} has no Triton data type")
    tensor.name = port.get_any_name()
    tensor.data_type = mc.DataType.Value(_OV_TYPES[element])
    # Triton's backend writes -1 for every dimension of a shape that is not fully static,
    # which its own exact output check then refuses ([?, 4] -> dims [-1] against the
    # compiled [N, 4]); a static dimension keeps its length here, so the result loads
    dims = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
    tensor.dims.extend(dims[1:] if config.max_batch_size > 0 else dims)
