"""The model repository: scanning roots, naming rules, versions and version policy, model
files, and loading each model's completed configuration (the A -> D contract)."""

from llmserve.config.errors import ConfigError
from llmserve.config.parse import config_to_json_dict
from llmserve.config.platforms import backend_of
from llmserve.repository.files import (
    config_file_for,
    label_file_path,
    model_file_path,
    model_filename,
)
from llmserve.repository.load import load_model_config
from llmserve.repository.naming import check_model_name, name_problem
from llmserve.repository.scan import find_model, scan_repositories
from llmserve.repository.versions import apply_version_policy, list_versions, select_versions

__all__ = [
    "ConfigError",
    "apply_version_policy",
    "backend_of",
    "check_model_name",
    "config_file_for",
    "config_to_json_dict",
    "find_model",
    "label_file_path",
    "list_versions",
    "load_model_config",
    "model_file_path",
    "model_filename",
    "name_problem",
    "scan_repositories",
    "select_versions",
]
