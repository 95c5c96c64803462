"""Validation of a completed ModelConfig, rule for rule as Triton's ValidateModelConfig and
ValidateModelIOConfig (the bar is Triton's L0_model_config): identity, platform/backend,
batch size, inputs/outputs/reshape, dynamic batching, instance groups, cache.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config import platforms as pf
from llmserve.config.ensemble import validate_ensemble
from llmserve.config.errors import fail
from llmserve.config.validate_scheduling import validate_sequence_batching

WILDCARD = -1
_DT = mc.DataType
_KIND = mc.ModelInstanceGroup.Kind

# The seed's data type table: types a framework cannot hold at all. (The table's blanks
# for PyTorch FP16/STRING are outdated: Triton's PyTorch backend maps both.)
_ALL_TYPES = {n for n in _DT.keys() if n != "TYPE_INVALID"}
BACKEND_TYPES = {
    pf.TENSORRT: {"TYPE_BOOL", "TYPE_UINT8", "TYPE_INT8", "TYPE_INT32", "TYPE_INT64",
                  "TYPE_FP16", "TYPE_FP32", "TYPE_BF16"},
    pf.TENSORFLOW: _ALL_TYPES - {"TYPE_BF16"},
    pf.ONNXRUNTIME: _ALL_TYPES - {"TYPE_BF16"},
    pf.PYTORCH: _ALL_TYPES - {"TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64"},
}


def validate_config(config: mc.ModelConfig, gpus: list[int]) -> None:
    """Raise ConfigError for the first rule the completed config breaks. `gpus` are the
    usable GPU ids (devices.supported_gpus())."""
    name = config.name
    _validate_identity(config)
    validate_io(config)
    if config.HasField("dynamic_batching"):
        _validate_dynamic_batching(config)
    if config.HasField("sequence_batching"):
        validate_sequence_batching(config)
    if config.HasField("ensemble_scheduling"):
        validate_ensemble(config)
    else:
        if config.platform == pf.ENSEMBLE:
            raise fail(f"ensemble scheduling must be set for ensemble {name} whose platform "
                       f"is {pf.ENSEMBLE}")
        validate_instance_groups(config, gpus)
    if config.response_cache.enable and config.model_transaction_policy.decoupled:
        raise fail(f"Response Cache does not currently support model {name} with 'decoupled' "
                   "transaction policy. Please disable the response cache.")
    if config.response_cache.enable and config.HasField("sequence_batching"):
        raise fail(f"Response Cache does not currently support model {name} with sequence "
                   "batching scheduler. Please disable the response cache.")


def _validate_identity(config: mc.ModelConfig) -> None:
    name = config.name
    if not name:
        raise fail("model configuration must specify 'name'")
    if not config.backend and config.platform != pf.ENSEMBLE:
        if not config.platform:
            raise fail(f"must specify 'platform' or 'backend' for '{name}'")
        raise fail(f"unexpected platform type '{config.platform}' for {name}; known platforms "
                   f"are {', '.join(sorted(pf.KNOWN_PLATFORMS))}")
    if config.backend and config.platform == pf.ENSEMBLE:
        raise fail(f"Ensemble model '{name}' must have platform type '{pf.ENSEMBLE}' and "
                   "empty backend type")
    if config.backend in pf.TYPED_BACKENDS and (
        pf.PLATFORM_BACKENDS.get(config.platform) != config.backend
    ):
        raise fail(f"unexpected 'platform' and 'backend' pair, got:{config.platform}, "
                   f"{config.backend}")
    if config.platform and config.platform not in pf.KNOWN_PLATFORMS:
        raise fail(f"unexpected platform type '{config.platform}' for {name}")
    if config.max_batch_size < 0:
        raise fail(f"'max_batch_size' must be non-negative value for {name}")
    if not config.HasField("version_policy"):
        raise fail(f"must specify 'version policy' for {name}")


def _check_dims(dims, what: str, anchor: str, word: str = "dimension") -> None:
    for dim in dims:
        if dim < 1 and dim != WILDCARD:
            raise fail(f"{what} {word} must be integer >= 1, or {WILDCARD} to indicate a "
                       f"variable-size dimension, got {list(dims)}", anchor)


def _element_count(dims) -> int:
    if not dims:
        return 0
    count = 1
    for dim in dims:
        if dim == WILDCARD:
            return -1
        count *= dim
    return count


def _trunks(dims) -> list[int]:
    """Element counts of the runs between variable-size dimensions."""
    out, current = [], 1
    for dim in dims:
        if dim == WILDCARD:
            out.append(current)
            current = 1
        else:
            current *= dim
    out.append(current)
    return out


def validate_io_shape(io, max_batch_size: int, prefix: str, model: str) -> None:
    """Triton's ValidateIOShape for a ModelInput, ModelOutput or sequence State."""
    name = getattr(io, "name", "") or getattr(io, "input_name", "")
    if not name:
        raise fail(f"{prefix}must specify 'name' for {model}")
    what = f"{prefix}'{name}'"
    if io.data_type == _DT.TYPE_INVALID:
        raise fail(f"{what} must specify 'data_type' for {model}", name)
    if len(io.dims) == 0:
        raise fail(f"{what} must specify 'dims' for {model}", name)
    has_reshape = hasattr(io, "reshape") and io.HasField("reshape")
    if has_reshape and len(io.reshape.shape) == 0 and max_batch_size == 0:
        raise fail(f"{what} cannot have empty reshape for non-batching model as scalar "
                   f"tensors are not supported for {model}", name)
    _check_dims(io.dims, what, name)
    if not has_reshape:
        return
    shape = io.reshape.shape
    _check_dims(shape, what, name, "reshape dimensions")
    dims_size, reshape_size = _element_count(io.dims), _element_count(shape)
    if dims_size != reshape_size and (reshape_size != 0 or dims_size != 1):
        raise fail(f"{what} has different size for dims {list(io.dims)} and reshape "
                   f"{list(shape)} for {model}", name)
    if dims_size == -1:
        a, b = _trunks(io.dims), _trunks(shape)
        if len(a) != len(b):
            raise fail(f"{what} has different number of variable-size dimensions for dims "
                       f"{list(io.dims)} and reshape {list(shape)} for {model}", name)
        if a != b:
            raise fail(f"{what} has different size for dims {list(io.dims)} and reshape "
                       f"{list(shape)} for {model}", name)


def validate_io(config: mc.ModelConfig) -> None:
    """Inputs and outputs: name, data_type, dims, reshape, unique names, shape tensors,
    non-linear formats and the backend's data types."""
    model = config.name
    backend = pf.backend_of(config)
    allowed = BACKEND_TYPES.get(backend)
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for io in tensors:
            prefix = f"model {kind} "
            validate_io_shape(io, config.max_batch_size, prefix, model)
            what = f"{prefix}'{io.name}'"
            if io.name in seen:
                raise fail(f"{what} is declared more than once for {model}", io.name)
            seen.add(io.name)
            if kind == "input" and io.format in (mc.ModelInput.FORMAT_NHWC,
                                                 mc.ModelInput.FORMAT_NCHW):
                if len(io.dims) != 3:
                    raise fail(f"{what}: NHWC/NCHW require 3 dims for {model}", io.name)
            if io.is_shape_tensor and config.platform != pf.TENSORRT_PLAN:
                raise fail(f"{what}: shape tensors are only supported for TensorRT platform "
                           f"(model {model})", io.name)
            if io.is_non_linear_format_io and config.platform != pf.TENSORRT_PLAN:
                raise fail(f"{what}: non-linear IO format is only supported for the TensorRT "
                           f"platform (model {model})", io.name)
            type_name = _DT.Name(io.data_type)
            if allowed is not None and type_name not in allowed:
                raise fail(f"{what} has data type {type_name}, which the {backend} backend "
                           f"does not support (model {model})", io.name)
    _validate_batch_io(config)


def _validate_batch_io(config: mc.ModelConfig) -> None:
    inputs = {i.name for i in config.input}
    for bi in config.batch_input:
        if not bi.target_name:
            raise fail(f"batch input of model {config.name} must specify 'target_name'")
        if bi.data_type not in (_DT.TYPE_INT32, _DT.TYPE_FP32):
            raise fail(f"batch input '{bi.target_name[0]}' of model {config.name}: data type "
                       "must be TYPE_INT32 or TYPE_FP32", bi.target_name[0])
        for src in bi.source_input:
            if src not in inputs:
                raise fail(f"batch input '{bi.target_name[0]}' of model {config.name} names "
                           f"unknown source input '{src}'", bi.target_name[0])
    outputs = {o.name for o in config.output}
    for bo in config.batch_output:
        for target in bo.target_name:
            if target not in outputs:
                raise fail(f"batch output '{target}' of model {config.name} is not a model "
                           "output", target)


def _validate_dynamic_batching(config: mc.ModelConfig) -> None:
    db, name = config.dynamic_batching, config.name
    for size in db.preferred_batch_size:
        if size <= 0:
            raise fail(f"dynamic batching preferred size must be positive for {name}")
        if size > config.max_batch_size:
            raise fail(f"dynamic batching preferred size must be <= max batch size for {name} "
                       f"(preferred {size}, max_batch_size {config.max_batch_size})")
    levels = db.priority_levels
    if levels != 0:
        if db.default_priority_level == 0 or db.default_priority_level > levels:
            raise fail(f"default priority level must be in range [1, {levels}] for {name}")
        for level in db.priority_queue_policy:
            if level == 0 or level > levels:
                raise fail(f"priority queue policy must have priority level in range "
                           f"[1, {levels}] for {name}")
    if db.preserve_ordering:
        if levels > 1:
            raise fail("Only one priority level is allowed when 'preserve_ordering' is true "
                       f"for {name}")
        policies = [db.default_queue_policy, *db.priority_queue_policy.values()]
        for policy in policies:
            if (policy.default_timeout_microseconds != 0
                    and policy.timeout_action == mc.ModelQueuePolicy.DELAY):
                raise fail("Queue policy can not have DELAY as timeout action when "
                           f"'preserve_ordering' is true for {name}")


def validate_instance_groups(config: mc.ModelConfig, gpus: list[int]) -> None:
    """Triton's ValidateInstanceGroup, run after instance groups are completed."""
    model = config.name
    if len(config.instance_group) == 0:
        raise fail(f"must specify one or more 'instance group's for {model}")
    resource_scope: dict[str, bool] = {}
    for group in config.instance_group:
        where = f"instance group {group.name} of model {model}"
        if group.kind == _KIND.KIND_MODEL:
            if group.gpus:
                raise fail(f"{where} has kind KIND_MODEL but specifies one or more GPUs",
                           group.name)
        elif group.kind == _KIND.KIND_GPU:
            if not group.gpus:
                if not gpus:
                    raise fail(f"{where} has kind KIND_GPU but no GPUs are available",
                               group.name)
                raise fail(f"{where} has kind KIND_GPU but specifies no GPUs", group.name)
            for gid in group.gpus:
                if gid not in gpus:
                    usable = ", ".join(str(g) for g in gpus) or "none"
                    raise fail(f"{where} specifies invalid or unsupported gpu id {gid}. "
                               f"GPUs with at least the minimum required CUDA compute "
                               f"compatibility are: {usable}", group.name)
        elif group.kind == _KIND.KIND_CPU:
            if group.gpus:
                raise fail(f"{where} has kind KIND_CPU but specifies one or more GPUs",
                           group.name)
        else:
            raise fail(f"{where} has unexpected kind KIND_AUTO", group.name)
        if group.count < 1:
            raise fail(f"{where} must have count >= 1", group.name)
        if group.profile:
            if config.platform != pf.TENSORRT_PLAN:
                raise fail(f"{where} and platform {config.platform} specifies profile field "
                           "which is only supported for TensorRT models", group.name)
            for profile in group.profile:
                if not profile.isdigit():
                    raise fail(f"{where} specifies invalid profile {profile}. The field should "
                               "contain the string representation of a non-negative integer.",
                               group.name)
        for res in group.rate_limiter.resources:
            if not res.name:
                raise fail(f"{where}: rate limiter resources must have a name", group.name)
            is_global = getattr(res, "global")
            if resource_scope.setdefault(res.name, is_global) != is_global:
                raise fail(f"resource '{res.name}' of model {model} is declared both global "
                           "and per-device", group.name)
