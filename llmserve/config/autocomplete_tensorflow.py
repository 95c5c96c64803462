"""Backend-side auto-complete for TensorFlow SavedModels, as Triton's TensorFlow backend
does it (a GraphDef says too little about itself: its config must be complete): batching
when every signature tensor has a variable first dimension and the config's own tensors
do not say otherwise, then an unset max_batch_size becomes default-max-batch-size with
dynamic batching; missing inputs and outputs are filled from the signature."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config.errors import ConfigError

log = logging.getLogger(__name__)


def run_tensorflow_auto_complete(config: mc.ModelConfig, model_path: Path,
                                 default_batch: int) -> None:
    if config.platform != "tensorflow_savedmodel" or not model_path.is_dir():
        return
    if importlib.util.find_spec("tensorflow") is None:
        log.warning("model '%s': tensorflow is not installed, so its inputs, outputs and "
                    "max_batch_size cannot be read from %s (auto-complete not applied)",
                    config.name, model_path)
        return
    from llmserve.backends.tensorflow.graph import SessionSettings, open_model
    from llmserve.core.errors import ServerError

    params = config.parameters
    settings = SessionSettings(
        intra_threads=1, inter_threads=1,
        graph_tag=params["TF_GRAPH_TAG"].string_value if "TF_GRAPH_TAG" in params else "",
        signature_def=(params["TF_SIGNATURE_DEF"].string_value
                       if "TF_SIGNATURE_DEF" in params else ""))
    try:
        model = open_model(model_path, config.name, settings)
    except ServerError as e:
        raise ConfigError(f"unable to auto-complete model configuration for '{config.name}', "
                          f"failed to load model: {e.message}") from None
    try:
        _complete(config, list(model.inputs.values()), list(model.outputs.values()),
                  default_batch)
    finally:
        model.session.close()


def _complete(config: mc.ModelConfig, inputs: list[Any], outputs: list[Any],
              default_batch: int) -> None:
    tensors = inputs + outputs
    can_batch = all(t.shape is not None and len(t.shape) > 0 and t.shape[0] == -1
                    for t in tensors)
    if not can_batch and config.max_batch_size > 0:
        raise ConfigError(f"unable to autofill for '{config.name}', configuration specified "
                          f"max-batch {config.max_batch_size} but model signature does not "
                          "support batching")
    if can_batch and config.max_batch_size == 0 and not _config_says_no_batch(config, tensors):
        config.max_batch_size = max(default_batch, 0)
        if config.max_batch_size > 0:
            log.warning("autofilled max_batch_size to %d for model '%s' since batching is "
                        "supported but no max_batch_size is specified in model "
                        "configuration", config.max_batch_size, config.name)
        if config.max_batch_size > 1 and not (config.HasField("dynamic_batching")
                                              or config.HasField("sequence_batching")):
            config.dynamic_batching.SetInParent()
    for cfgs, found in ((config.input, inputs), (config.output, outputs)):
        if len(cfgs) == 0:
            for t in found:
                _fill(cfgs.add(), t, config)


def _config_says_no_batch(config: mc.ModelConfig, tensors: list[Any]) -> bool:
    """A tensor the config lists with as many dims as the model's full shape is a hint that
    the model does not batch (Triton's explicit batch hint)."""
    shapes = {t.name: t.shape for t in tensors}
    for cfg in list(config.input) + list(config.output):
        shape = shapes.get(cfg.name)
        if shape is not None and len(cfg.dims) > 0:
            return len(cfg.dims) == len(shape)
    return False


def _fill(tensor: Any, info: Any, config: mc.ModelConfig) -> None:
    tensor.name = info.name
    tensor.data_type = mc.DataType.Value(info.data_type)
    shape = list(info.shape or [])
    dims = shape[1:] if config.max_batch_size > 0 else shape
    if dims:
        tensor.dims.extend(dims)
    else:
        tensor.dims.append(1)
        tensor.reshape.SetInParent()
