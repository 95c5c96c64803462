"""Shape helpers over a ModelConfig: the full shape clients see ([-1] + dims when the model
batches), the shape the model itself sees (reshape), and tensor look-up by name.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

Tensor = mc.ModelInput | mc.ModelOutput


def full_dims(config: mc.ModelConfig, tensor: Tensor) -> list[int]:
    """The tensor's shape as requests carry it: [-1] + dims when max_batch_size > 0."""
    dims = [int(d) for d in tensor.dims]
    return [-1, *dims] if config.max_batch_size > 0 else dims


def model_dims(tensor: Tensor) -> list[int]:
    """The per-item shape the model consumes/produces: reshape.shape when set, else dims."""
    if tensor.HasField("reshape"):
        return [int(d) for d in tensor.reshape.shape]
    return [int(d) for d in tensor.dims]


def find_input(config: mc.ModelConfig, name: str) -> mc.ModelInput | None:
    for tensor in config.input:
        if tensor.name == name:
            return tensor
    return None


def find_output(config: mc.ModelConfig, name: str) -> mc.ModelOutput | None:
    for tensor in config.output:
        if tensor.name == name:
            return tensor
    return None


def shape_matches(dims: list[int], shape: list[int]) -> bool:
    """True when a concrete shape fits config dims (-1 matches any size >= 0)."""
    return len(dims) == len(shape) and all(d == -1 or d == s for d, s in zip(dims, shape,
                                                                              strict=True))
