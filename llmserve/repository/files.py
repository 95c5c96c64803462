"""Files of a model folder: which config file applies (--model-config-name picks
configs/NAME.pbtxt, else config.pbtxt, else none: auto-complete), the model file of a
version (default_model_filename, per-backend default, cc_model_filenames), label files.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config import devices
from llmserve.config import platforms as pf
from llmserve.config.errors import ConfigError
from llmserve.repository.naming import contained_path

CONFIG_FILE = "config.pbtxt"
CUSTOM_CONFIG_DIR = "configs"


def check_config_name(config_name: str) -> None:
    """A --model-config-name must be a plain file stem: no whitespace, no path."""
    if (not config_name or any(c.isspace() for c in config_name) or "/" in config_name
            or "\\" in config_name or config_name in (".", "..")):
        raise ConfigError(f"invalid model config name '{config_name}': it must be a file name "
                          "without whitespace or path separators (configs/<NAME>.pbtxt)")


def config_file_for(model_dir: Path, config_name: str | None = None) -> Path | None:
    """configs/<config_name>.pbtxt when config_name is given and that file exists, else
    config.pbtxt when it exists, else None (the config is auto-completed)."""
    model_dir = Path(model_dir)
    if config_name:
        check_config_name(config_name)
        custom = model_dir / CUSTOM_CONFIG_DIR / f"{config_name}.pbtxt"
        if custom.is_file():
            return custom
    default = model_dir / CONFIG_FILE
    return default if default.is_file() else None


def model_filename(config: mc.ModelConfig, device_id: int | None = None) -> str:
    """The model file name for an instance on `device_id` (None: the first GPU, if any):
    the cc_model_filenames entry for that GPU's compute capability, else
    default_model_filename, else the backend's default ("" when the backend has none)."""
    if config.cc_model_filenames:
        gpus = devices.supported_gpus()
        if gpus:
            device = gpus[0] if device_id is None else device_id
            cc = devices.compute_capability(device)
            if cc is not None and cc in config.cc_model_filenames:
                return config.cc_model_filenames[cc]
    return pf.default_model_filename(config)


def model_file_path(model_dir: Path, version: int, config: mc.ModelConfig,
                    device_id: int | None = None) -> Path:
    """Path of the model file (or folder) a version loads. Backends without a model file
    (ensemble, tensorrtllm, ...) get the version folder. For the framework backends and
    python the file must exist (ConfigError naming what is missing)."""
    model_dir = Path(model_dir)
    root = model_dir.parent
    version_dir = model_dir / str(version)
    if not version_dir.is_dir():
        raise ConfigError(f"{version_dir}: version {version} of model '{config.name}' has no "
                          "version folder")
    contained_path(model_dir, str(version), root, "version folder")
    filename = model_filename(config, device_id)
    if not filename:
        return version_dir
    path = contained_path(version_dir, filename, root, "model file name")
    backend = pf.backend_of(config)
    if backend not in pf.FILE_BACKENDS:
        return path
    if config.platform == pf.TENSORFLOW_SAVEDMODEL:
        if not path.is_dir():
            raise _missing(path, config, version, "a SavedModel folder")
        return path
    if backend == pf.ONNXRUNTIME and path.is_dir():
        inner = path / "model.onnx"
        if not inner.is_file():
            raise _missing(inner, config, version, "the ONNX model inside the model folder")
        return inner
    if not path.is_file():
        raise _missing(path, config, version, "the model file")
    if (backend == pf.OPENVINO and path.suffix == ".xml"
            and not path.with_suffix(".bin").is_file()):
        raise _missing(path.with_suffix(".bin"), config, version, "the OpenVINO weights")
    return path


def _missing(path: Path, config: mc.ModelConfig, version: int, what: str) -> ConfigError:
    return ConfigError(f"{path}: {what} of version {version} of model '{config.name}' "
                       f"({pf.backend_of(config)} backend) does not exist")


def label_file_path(model_dir: Path, output: mc.ModelOutput) -> Path | None:
    """The label file of a classification output (relative to the model folder)."""
    if not output.label_filename:
        return None
    model_dir = Path(model_dir)
    path = contained_path(model_dir, output.label_filename, model_dir.parent,
                          f"label_filename of output '{output.name}'")
    if not path.is_file():
        raise ConfigError(f"{path}: label file of output '{output.name}' does not exist")
    return path
