"""Backend-side auto-complete for Python models: call the model's static
TritonPythonModel.auto_complete_config(cfg) with a pb_utils.ModelConfig and take the
config it returns, in a stub process for models that run in stubs (Triton's way) or in
the server for in-process ones. Models without that method are never imported here.
"""

from __future__ import annotations

import ast
import threading
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.python.response_rules import model_file_line
from llmserve.config.errors import ConfigError
from llmserve.config.parse import config_to_json_dict, parse_config_json
from llmserve.core.errors import ServerError

_lock = threading.Lock()


def defines_auto_complete(model_file: Path) -> bool:
    """Whether model.py's TritonPythonModel defines auto_complete_config (read, not run)."""
    try:
        source = Path(model_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{model_file}: cannot read the Python model: {e}") from None
    try:
        # CPython 3.11 can fail ("AST constructor recursion depth mismatch") when two
        # threads build AST objects at once; model loads run in parallel threads.
        with _lock:
            tree = ast.parse(source, filename=str(model_file))
    except SyntaxError as e:
        raise ConfigError(f"{model_file}:{e.lineno}: syntax error: {e.msg}") from None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "TritonPythonModel":
            return any(
                isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                and item.name == "auto_complete_config"
                for item in node.body
            )
    return False


def run_python_auto_complete(config: mc.ModelConfig, model_file: Path,
                             options: Any = None) -> mc.ModelConfig:
    """Return the config completed by the model's auto_complete_config, or `config`
    unchanged when the model does not define it. With the server's options, a model that
    runs in stubs is asked in a stub process."""
    model_file = Path(model_file)
    if not model_file.is_file():
        raise ConfigError(f"{model_file}: Python model file not found for model "
                          f"'{config.name}'")
    if not defines_auto_complete(model_file):
        return config
    from llmserve.backends.python.model_config import ModelConfig as PbModelConfig

    if options is not None and _in_stub(config, options):
        completed = _auto_complete_in_stub(config, model_file, options)
    else:
        cfg = PbModelConfig(config_to_json_dict(config))
        try:
            result = _call_auto_complete(model_file, cfg)
        except Exception as e:  # the model's own code: report it, never crash the server
            raise ConfigError(_describe(type(e).__name__, str(e), model_file_line(e, model_file),
                                        model_file, config.name)) from None
        if result is None:
            result = cfg
        if not isinstance(result, PbModelConfig):
            raise ConfigError(_not_a_config(model_file, config.name, type(result).__name__))
        completed = result.as_dict()
    return parse_config_json(completed, f"{model_file}: config returned by auto_complete_config")


def _in_stub(config: mc.ModelConfig, options: Any) -> bool:
    from llmserve.backends.python.stub_settings import execution_mode, settings_of

    try:
        return execution_mode(config, settings_of(options)) == "stub"
    except ServerError as e:
        raise ConfigError(str(e)) from None


def _auto_complete_in_stub(config: mc.ModelConfig, model_file: Path, options: Any) -> dict:
    from llmserve.backends.python.stub_autocomplete import auto_complete_in_stub

    try:
        completed, failure = auto_complete_in_stub(config, config_to_json_dict(config),
                                                   Path(model_file), options)
    except ServerError as e:
        raise ConfigError(f"{model_file}: auto_complete_config of model '{config.name}' "
                          f"failed: {e}") from None
    if failure is not None:
        kind, message, line = failure
        if kind == "not_a_config":  # it returned something else
            raise ConfigError(_not_a_config(model_file, config.name, message))
        raise ConfigError(_describe(kind, message, line, model_file, config.name))
    return completed


def _not_a_config(model_file: Path, model: str, got: str) -> str:
    return (f"{model_file}: auto_complete_config of model '{model}' must return the "
            f"pb_utils.ModelConfig it was given, got {got}")


def _call_auto_complete(model_file: Path, cfg: Any) -> Any:
    # the model's own modules stay private to this import, as when the model loads
    from llmserve.backends.python.loader import import_model_module

    module = import_model_module(model_file, "autocomplete", 0)
    model_class = getattr(module, "TritonPythonModel", None)
    if model_class is None:
        raise AttributeError(f"{model_file.name} defines no class TritonPythonModel")
    return model_class.auto_complete_config(cfg)


def _describe(kind: str, message: str, line: int, model_file: Path, model: str) -> str:
    where = f"{model_file}:{line}" if line else str(model_file)
    return f"{where}: auto_complete_config of model '{model}' failed: {kind}: {message}"
