"""Model configuration: config.pbtxt <-> the ModelConfig protobuf, Triton's validation,
completion and auto-complete, and shape helpers. Filesystem concerns live in
llmserve.repository."""

from llmserve.config.complete import (
    apply_default_max_batch_size,
    default_instance_count,
    enable_default_dynamic_batching,
    host_policy_name,
)
from llmserve.config.ensemble import validate_ensemble, validate_ensemble_steps
from llmserve.config.errors import ConfigError
from llmserve.config.parse import (
    ModelConfig,
    config_to_json,
    config_to_json_dict,
    config_to_text,
    parse_config_file,
    parse_config_json,
    parse_config_text,
)
from llmserve.config.platforms import backend_of
from llmserve.config.shapes import find_input, find_output, full_dims, model_dims, shape_matches
from llmserve.config.validate import validate_config

__all__ = [
    "ConfigError",
    "ModelConfig",
    "apply_default_max_batch_size",
    "backend_of",
    "config_to_json",
    "config_to_json_dict",
    "config_to_text",
    "default_instance_count",
    "enable_default_dynamic_batching",
    "find_input",
    "find_output",
    "full_dims",
    "host_policy_name",
    "model_dims",
    "parse_config_file",
    "parse_config_json",
    "parse_config_text",
    "shape_matches",
    "validate_config",
    "validate_ensemble",
    "validate_ensemble_steps",
]
