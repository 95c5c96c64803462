"""Platform and backend names, default model file names, and Triton's server-side fill of
the backend fields (AutoCompleteBackendFields): which backend runs a model and what file
it loads, derived from the config and the first version folder.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config.errors import ConfigError

TENSORRT_PLAN = "tensorrt_plan"
TENSORFLOW_GRAPHDEF = "tensorflow_graphdef"
TENSORFLOW_SAVEDMODEL = "tensorflow_savedmodel"
ONNXRUNTIME_ONNX = "onnxruntime_onnx"
PYTORCH_LIBTORCH = "pytorch_libtorch"
ENSEMBLE = "ensemble"

TENSORRT = "tensorrt"
TENSORFLOW = "tensorflow"
ONNXRUNTIME = "onnxruntime"
PYTORCH = "pytorch"
OPENVINO = "openvino"
PYTHON = "python"
DALI = "dali"
TENSORRTLLM = "tensorrtllm"

# platform -> backend (Triton's GetBackendTypeFromPlatform).
PLATFORM_BACKENDS = {
    TENSORRT_PLAN: TENSORRT,
    TENSORFLOW_GRAPHDEF: TENSORFLOW,
    TENSORFLOW_SAVEDMODEL: TENSORFLOW,
    ONNXRUNTIME_ONNX: ONNXRUNTIME,
    PYTORCH_LIBTORCH: PYTORCH,
}
KNOWN_PLATFORMS = set(PLATFORM_BACKENDS) | {ENSEMBLE}
# Backends whose platform Triton types; a pair that disagrees with the platform is an error.
TYPED_BACKENDS = {TENSORRT, TENSORFLOW, ONNXRUNTIME, PYTORCH}

# Default model file per backend (TensorFlow's depends on the platform, see below).
DEFAULT_FILENAMES = {
    TENSORRT: "model.plan",
    ONNXRUNTIME: "model.onnx",
    PYTORCH: "model.pt",
    OPENVINO: "model.xml",
    DALI: "model.dali",
    PYTHON: "model.py",
}
TENSORFLOW_FILENAMES = {
    TENSORFLOW_GRAPHDEF: "model.graphdef",
    TENSORFLOW_SAVEDMODEL: "model.savedmodel",
}
# Backends whose model file must exist before a version can load.
FILE_BACKENDS = {TENSORRT, TENSORFLOW, ONNXRUNTIME, PYTORCH, OPENVINO, DALI, PYTHON}
# Backends that only run on CPU: their default instance group is KIND_CPU even with GPUs.
CPU_ONLY_BACKENDS = {OPENVINO}
# Backends whose KIND_CPU instance groups default to count 2 (Triton's SetDefaultInstanceCount).
CPU_COUNT_TWO_BACKENDS = {TENSORFLOW, ONNXRUNTIME}


def backend_of(config: mc.ModelConfig) -> str:
    """The backend that runs this model: "python", "onnxruntime", "ensemble", ...."""
    if config.backend:
        return config.backend
    if config.platform == ENSEMBLE or config.HasField("ensemble_scheduling"):
        return ENSEMBLE
    return PLATFORM_BACKENDS.get(config.platform, config.platform)


def default_model_filename(config: mc.ModelConfig) -> str:
    """The model file name of a version: default_model_filename or the backend default."""
    if config.default_model_filename:
        return config.default_model_filename
    if config.platform in TENSORFLOW_FILENAMES:
        return TENSORFLOW_FILENAMES[config.platform]
    return DEFAULT_FILENAMES.get(backend_of(config), "")


def _version_contents(model_dir: Path | None, version_dirs: list[str]) -> tuple[Path | None, set]:
    if model_dir is None or not version_dirs:
        return None, set()
    version_path = model_dir / sorted(version_dirs)[0]
    try:
        return version_path, {p.name for p in version_path.iterdir()}
    except OSError:
        return version_path, set()


def complete_backend_fields(
    config: mc.ModelConfig, model_name: str, model_dir: Path | None, version_dirs: list[str]
) -> None:
    """Triton's server-side auto-complete: name, platform, backend, default_model_filename.

    Runs even with --disable-auto-complete-config (Triton does the same). `version_dirs`
    are the model's version folder names; the first (string order) is inspected.
    """
    if not config.name:
        config.name = model_name
    vpath, contents = _version_contents(model_dir, version_dirs)
    has_version = vpath is not None

    def is_dir(name: str) -> bool:
        return vpath is not None and (vpath / name).is_dir()

    # TensorFlow: the platform is required, derive it from file names.
    if not config.platform and config.backend in ("", TENSORFLOW):
        dmf = config.default_model_filename
        if dmf == "model.savedmodel":
            config.platform = TENSORFLOW_SAVEDMODEL
        elif dmf == "model.graphdef":
            config.platform = TENSORFLOW_GRAPHDEF
        elif not dmf and has_version:
            if "model.savedmodel" in contents and is_dir("model.savedmodel"):
                config.platform = TENSORFLOW_SAVEDMODEL
            if "model.graphdef" in contents and not is_dir("model.graphdef"):
                config.platform = TENSORFLOW_GRAPHDEF
    if config.platform in (TENSORFLOW_SAVEDMODEL, TENSORFLOW_GRAPHDEF):
        config.backend = config.backend or TENSORFLOW
        config.default_model_filename = (
            config.default_model_filename or TENSORFLOW_FILENAMES[config.platform]
        )
        return

    if _fill_typed(config, TENSORRT, TENSORRT_PLAN, "model.plan", has_version, contents,
                   is_dir, file_only=True):
        return
    if _fill_typed(config, ONNXRUNTIME, ONNXRUNTIME_ONNX, "model.onnx", has_version, contents,
                   is_dir, file_only=False):
        return
    if config.backend == OPENVINO:
        config.default_model_filename = config.default_model_filename or "model.xml"
        return
    if _fill_typed(config, PYTORCH, PYTORCH_LIBTORCH, "model.pt", has_version, contents,
                   is_dir, file_only=True):
        return

    # Python
    if not config.backend:
        if config.default_model_filename == "model.py":
            config.backend = PYTHON
        elif (not config.platform and not config.default_model_filename and has_version
              and "model.py" in contents):
            config.backend = PYTHON
    if config.backend == PYTHON:
        config.default_model_filename = config.default_model_filename or "model.py"
        return

    # Custom backend named by the folder: <name>.<backend>.
    if not config.backend and not config.platform and not config.default_model_filename:
        if "." not in model_name:
            raise ConfigError(
                f"Invalid model name: Could not determine backend for model '{model_name}' "
                "with no backend in model configuration. Expected model name of the form "
                "'model.<backend_name>'."
            )
        backend = model_name.split(".", 1)[1]
        config.backend = backend
        config.default_model_filename = f"model.{backend}"


def _fill_typed(config, backend, platform, filename, has_version, contents, is_dir,
                *, file_only: bool) -> bool:
    if not config.backend:
        if config.platform == platform or config.default_model_filename == filename:
            config.backend = backend
        elif (not config.platform and not config.default_model_filename and has_version
              and filename in contents and (not file_only or not is_dir(filename))):
            config.backend = backend
    if config.backend != backend:
        return False
    if not config.platform:
        config.platform = platform
    if backend == PYTORCH and config.runtime == "model.py":
        return True
    if not config.default_model_filename:
        config.default_model_filename = filename
    return True
