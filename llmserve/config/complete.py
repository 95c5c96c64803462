"""Completion of a parsed ModelConfig as Triton does it after auto-complete: defaults
(version policy, preferred batch sizes, sequence idle time, pinned memory), default and
completed instance groups, identical duplicate outputs dropped, batching defaults.
"""

from __future__ import annotations

import logging

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config import platforms as pf
from llmserve.config.errors import fail

log = logging.getLogger(__name__)

SEQUENCE_IDLE_DEFAULT_MICROSECONDS = 1_000_000
_KIND = mc.ModelInstanceGroup.Kind


def drop_duplicate_outputs(config: mc.ModelConfig, source: str = "") -> None:
    """An output declared twice identically is dropped with a warning (tensorrtllm_backend's
    own ensemble does this); a conflicting second declaration is an error."""
    kept: dict[str, mc.ModelOutput] = {}
    unique = []
    for out in config.output:
        first = kept.get(out.name)
        if first is None:
            kept[out.name] = out
            unique.append(out)
        elif first == out:
            log.warning("%s: output '%s' of model '%s' is declared twice identically; the "
                        "duplicate is ignored", source or "model configuration", out.name,
                        config.name)
        else:
            raise fail(f"model output '{out.name}' is declared twice with different "
                       f"settings for {config.name}", out.name)
    if len(unique) != len(config.output):
        copies = [mc.ModelOutput() for _ in unique]
        for copy, out in zip(copies, unique, strict=True):
            copy.CopyFrom(out)
        del config.output[:]
        config.output.extend(copies)


def normalize_config(config: mc.ModelConfig) -> None:
    """Triton's NormalizeModelConfig."""
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        if len(db.preferred_batch_size) == 0 and config.max_batch_size > 0:
            db.preferred_batch_size.append(config.max_batch_size)
    if config.HasField("sequence_batching"):
        sb = config.sequence_batching
        if sb.max_sequence_idle_microseconds == 0:
            sb.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_MICROSECONDS
        if sb.HasField("oldest") and len(sb.oldest.preferred_batch_size) == 0:
            if config.max_batch_size > 0:
                sb.oldest.preferred_batch_size.append(config.max_batch_size)
    if not config.HasField("ensemble_scheduling") and config.platform != pf.ENSEMBLE:
        opt = config.optimization
        if not opt.HasField("input_pinned_memory"):
            opt.input_pinned_memory.enable = True
        if not opt.HasField("output_pinned_memory"):
            opt.output_pinned_memory.enable = True


def default_instance_count(kind: int, backend: str) -> int:
    """Triton's SetDefaultInstanceCount: 2 for KIND_CPU on tensorflow/onnxruntime, else 1."""
    if kind == _KIND.KIND_CPU and backend in pf.CPU_COUNT_TWO_BACKENDS:
        return 2
    return 1


def normalize_instance_groups(config: mc.ModelConfig, gpus: list[int]) -> None:
    """Triton's NormalizeInstanceGroup. With no instance_group one group named after the
    model is added (one instance per GPU, or KIND_CPU without GPUs); groups without a name
    become "<model>_<index>"; KIND_AUTO resolves to GPU or CPU; KIND_GPU without gpus
    takes every GPU; count < 1 takes the default count. Ensembles have no groups."""
    if config.HasField("ensemble_scheduling") or config.platform == pf.ENSEMBLE:
        return
    backend = pf.backend_of(config)
    if len(config.instance_group) == 0:
        group = config.instance_group.add()
        group.name = config.name
        if backend in pf.CPU_ONLY_BACKENDS:
            group.kind = _KIND.KIND_CPU
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.kind == _KIND.KIND_AUTO:
            if not gpus or any(g not in gpus for g in group.gpus):
                group.kind = _KIND.KIND_CPU
            else:
                group.kind = _KIND.KIND_GPU
        if group.kind == _KIND.KIND_GPU and len(group.gpus) == 0:
            group.gpus.extend(gpus)
        if group.count < 1:
            group.count = default_instance_count(group.kind, backend)


def host_policy_name(group: mc.ModelInstanceGroup, device_id: int = 0) -> str:
    """The host policy of an instance: the group's host_policy, else by kind: "cpu",
    "model" or "gpu_<device id>" (Triton sets it per instance, not in the config)."""
    if group.host_policy:
        return group.host_policy
    if group.kind == _KIND.KIND_GPU:
        return f"gpu_{device_id}"
    if group.kind == _KIND.KIND_MODEL:
        return "model"
    return "cpu"


def has_scheduler(config: mc.ModelConfig) -> bool:
    return any(config.HasField(f) for f in ("dynamic_batching", "sequence_batching",
                                            "ensemble_scheduling"))


def enable_default_dynamic_batching(config: mc.ModelConfig) -> bool:
    """max_batch_size > 1 and no scheduler given: switch dynamic batching on (what the
    auto-completing backends do). Returns True when it did."""
    if config.max_batch_size > 1 and not has_scheduler(config):
        config.dynamic_batching.SetInParent()
        return True
    return False


def apply_default_max_batch_size(config: mc.ModelConfig, default_max_batch_size: int,
                                 supports_batching: bool) -> None:
    """For a backend that auto-completes from its model file: a model that supports
    batching and whose config leaves max_batch_size at 0 gets
    --backend-config default-max-batch-size (default 4), then dynamic batching."""
    if supports_batching and config.max_batch_size == 0:
        config.max_batch_size = max(default_max_batch_size, 0)
    enable_default_dynamic_batching(config)
