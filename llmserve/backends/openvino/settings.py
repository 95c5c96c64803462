"""The model parameters Triton's OpenVINO backend reads, parsed as it parses them: flags
are YES (case-insensitive), numbers non-negative, hints from fixed sets; anything else is
an INVALID_ARG load error naming the parameter."""

from __future__ import annotations

from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import InvalidArgument

# parameters that become properties of the compiled model, in the backend's order
_COMPILE_KEYS = ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS", "HINT_BF16", "NUM_STREAMS",
                 "PERFORMANCE_HINT")


@dataclass(slots=True)
class OpenVinoSettings:
    skip_dynamic_batchsize: bool = False
    enable_batch_padding: bool = False
    reshape_io_layers: bool = False
    target_device: str = "CPU"
    cpu_extension_path: str = ""
    compile_properties: dict[str, str] = field(default_factory=dict)


def _param(config: mc.ModelConfig, key: str) -> str:
    return config.parameters[key].string_value if key in config.parameters else ""


def parse_settings(config: mc.ModelConfig) -> OpenVinoSettings:
    s = OpenVinoSettings()
    s.skip_dynamic_batchsize = _param(config, "SKIP_OV_DYNAMIC_BATCHSIZE").lower() == "yes"
    s.enable_batch_padding = _param(config, "ENABLE_BATCH_PADDING").lower() == "yes"
    s.reshape_io_layers = _param(config, "RESHAPE_IO_LAYERS").lower() == "yes"
    s.target_device = _param(config, "TARGET_DEVICE").upper() or "CPU"
    s.cpu_extension_path = _param(config, "CPU_EXTENSION_PATH")
    for key in _COMPILE_KEYS:
        if key in config.parameters:
            name, value = _compile_property(key, _param(config, key).lower())
            s.compile_properties[name] = value
    return s


def _compile_property(key: str, value: str) -> tuple[str, str]:
    """(OpenVINO property name, value) for one parameter."""
    if key in ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS"):
        if not value.isdigit():
            raise _bad(key, "a non-negative number", value)
        return key, value
    if key == "HINT_BF16":
        if value != "yes":
            raise _bad(key, "YES", value)
        return "INFERENCE_PRECISION_HINT", "bf16"
    if key == "NUM_STREAMS":
        if value in ("auto", "numa"):
            return key, value.upper()
        if not value.lstrip("-").isdigit() or int(value) < -1:
            raise _bad(key, "AUTO, NUMA or a number", value)
        return key, value
    if value not in ("latency", "throughput", "cumulative_throughput"):
        raise _bad(key, "LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT", value)
    return key, value.upper()


def _bad(key: str, expected: str, got: str) -> InvalidArgument:
    return InvalidArgument(f"expected the parameter '{key}' to be {expected}, got {got}")
