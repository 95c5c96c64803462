"""load_model_config: a model folder (plus server options and an optional JSON override)
to a completed, validated ModelConfig, in Triton's order: choose the config file, parse,
server-side backend fields, backend auto-complete, normalize, instance groups, validate.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config import devices
from llmserve.config import platforms as pf
from llmserve.config.autocomplete_onnx import (
    default_max_batch_size,
    needs_auto_complete,
    run_onnx_auto_complete,
)
from llmserve.config.autocomplete_openvino import run_openvino_auto_complete
from llmserve.config.autocomplete_python import run_python_auto_complete
from llmserve.config.autocomplete_tensorflow import run_tensorflow_auto_complete
from llmserve.config.complete import (
    drop_duplicate_outputs,
    enable_default_dynamic_batching,
    normalize_config,
    normalize_instance_groups,
)
from llmserve.config.errors import ConfigError
from llmserve.config.parse import parse_config_file, parse_config_json
from llmserve.config.validate import validate_config
from llmserve.options import ServerOptions
from llmserve.repository.files import config_file_for, label_file_path, model_file_path
from llmserve.repository.versions import apply_version_policy, version_dir_names

log = logging.getLogger(__name__)

# Backends whose auto-complete turns dynamic batching on for batching models (the seed).
_DYNAMIC_BATCHING_BACKENDS = {pf.TENSORFLOW, pf.ONNXRUNTIME, pf.TENSORRT}


def load_model_config(model_dir: Path, options: ServerOptions,
                      override_json: str | None = None) -> mc.ModelConfig:
    """The completed and validated config of the model in `model_dir`. Raises ConfigError
    (INVALID_ARG) whose message names the file, the line where known, and the problem."""
    model_dir = Path(model_dir)
    model_name = model_dir.name
    text = None
    if override_json is not None:
        source = f"config override for model '{model_name}'"
        config = parse_config_json(override_json, source)
        generated = False
    else:
        path = config_file_for(model_dir, options.model_config_name)
        if path is not None:
            source = str(path)
            config = parse_config_file(path)
            text = path.read_text(encoding="utf-8")
        else:
            source = f"{model_dir} (no config.pbtxt: auto-completed)"
            config = mc.ModelConfig()
        generated = path is None
    try:
        _complete(config, model_dir, options, generated)
        gpus = devices.supported_gpus()
        normalize_config(config)
        normalize_instance_groups(config, gpus)
        validate_config(config, gpus)
        for output in config.output:
            label_file_path(model_dir, output)
    except ConfigError as e:
        if str(e).startswith(str(model_dir)):
            raise  # already names its file (a model.py, a version folder)
        raise ConfigError(f"{_where(source, text, getattr(e, 'anchor', None))}: {e}") from None
    return config


def _complete(config: mc.ModelConfig, model_dir: Path, options: ServerOptions,
              generated: bool) -> None:
    model_name = model_dir.name
    if config.name and config.name != model_name:
        raise ConfigError(f"unexpected directory name '{model_name}' for model "
                          f"'{config.name}', directory name must equal model name")
    version_names = version_dir_names(model_dir)
    pf.complete_backend_fields(config, model_name, model_dir, version_names)
    drop_duplicate_outputs(config, str(model_dir))
    if options.disable_auto_complete_config:
        return
    backend = pf.backend_of(config)
    if backend == pf.PYTHON:
        versions = apply_version_policy([int(v) for v in version_names], config)
        if versions:
            model_file = model_file_path(model_dir, versions[-1], config)
            completed = run_python_auto_complete(config, model_file, options)
            if completed is not config:
                config.CopyFrom(completed)
                drop_duplicate_outputs(config, str(model_file))
        if generated:
            enable_default_dynamic_batching(config)
    elif backend == pf.ONNXRUNTIME:
        versions = apply_version_policy([int(v) for v in version_names], config)
        if versions and needs_auto_complete(config):
            model_file = model_file_path(model_dir, versions[-1], config)
            run_onnx_auto_complete(config, model_file, default_max_batch_size(options))
        enable_default_dynamic_batching(config)
    elif backend == pf.OPENVINO:
        versions = apply_version_policy([int(v) for v in version_names], config)
        if versions:
            model_file = model_file_path(model_dir, versions[-1], config)
            run_openvino_auto_complete(config, model_file,
                                       default_max_batch_size(options, pf.OPENVINO))
    elif backend == pf.TENSORFLOW:
        versions = apply_version_policy([int(v) for v in version_names], config)
        if versions and config.platform == pf.TENSORFLOW_SAVEDMODEL:
            model_path = model_file_path(model_dir, versions[-1], config)
            run_tensorflow_auto_complete(config, model_path,
                                         default_max_batch_size(options, pf.TENSORFLOW))
        elif generated or (len(config.input) == 0 and len(config.output) == 0):
            log.warning("model '%s': a TensorFlow GraphDef cannot describe itself; declare "
                        "max_batch_size, input and output in config.pbtxt", model_name)
        enable_default_dynamic_batching(config)
    elif backend in _DYNAMIC_BATCHING_BACKENDS:
        if generated or (len(config.input) == 0 and len(config.output) == 0):
            log.warning("model '%s': llmserve cannot read inputs, outputs or batching from a "
                        "%s model file; declare max_batch_size, input and output in "
                        "config.pbtxt (--backend-config default-max-batch-size is not applied)",
                        model_name, backend)
        enable_default_dynamic_batching(config)


def _where(source: str, text: str | None, anchor: str | None) -> str:
    """`source`, plus ':<line>' of the first line quoting `anchor` when the text is known."""
    if text is None or not anchor:
        return source
    quoted = f'"{anchor}"'
    for number, line in enumerate(text.splitlines(), start=1):
        if quoted in line.split("#", 1)[0]:
            return f"{source}:{number}"
    return source
