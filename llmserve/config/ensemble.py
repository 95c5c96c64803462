"""Ensemble checks: the section rules and the data-flow graph of the steps (Triton's
ValidateEnsembleSchedulingConfig / BuildEnsembleGraph), and, once the step models'
configs are known, that every mapped name is a real tensor of its step model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config import platforms as pf
from llmserve.config.errors import fail


@dataclass
class _Node:
    produced: bool = False  # appears in some step's output_map
    ready: bool = False
    prev: list[_Node] = field(default_factory=list)
    next: list[_Node] = field(default_factory=list)


def validate_ensemble(config: mc.ModelConfig) -> None:
    """Section rules and the step graph of an ensemble config."""
    name = config.name
    if config.platform != pf.ENSEMBLE:
        raise fail(f"ensemble scheduling cannot be set for model '{name}' whose platform is "
                   f"not {pf.ENSEMBLE}")
    if len(config.instance_group) != 0:
        raise fail(f"instance group should not be specified for ensemble '{name}'")
    if config.HasField("optimization"):
        raise fail(f"optimization should not be specified for ensemble '{name}'")
    if len(config.model_warmup) != 0:
        raise fail(f"model_warmup can not be specified for ensemble '{name}'")
    if len(config.ensemble_scheduling.step) == 0:
        raise fail(f"must specify 'step' for ensemble '{name}'")
    tensors = _build_graph(config)

    queue: deque[_Node] = deque()
    for tensor in config.input:
        node = tensors.get(tensor.name)
        if node is None:
            raise fail(f"ensemble input '{tensor.name}' for ensemble '{name}' is not used",
                       tensor.name)
        node.ready = True
        queue.append(node)
    while queue:
        node = queue.popleft()
        for nxt in node.next:
            if not nxt.ready and all(p.ready for p in nxt.prev):
                nxt.ready = True
                queue.append(nxt)

    inputs = {t.name for t in config.input}
    for tensor_name, node in tensors.items():
        if not node.produced and tensor_name not in inputs:
            raise fail(f"ensemble tensor '{tensor_name}' of ensemble '{name}' is used as a "
                       "step input but is neither an ensemble input nor any step's output",
                       tensor_name)
    for tensor in config.output:
        node = tensors.get(tensor.name)
        if node is None or not node.produced:
            raise fail(f"ensemble output '{tensor.name}' for ensemble '{name}' is not "
                       "written by any step's output_map", tensor.name)
        if not node.ready:
            raise fail(f"output '{tensor.name}' for ensemble '{name}' is not written: a step "
                       "producing it has an input that is never available", tensor.name)


def _build_graph(config: mc.ModelConfig) -> dict[str, _Node]:
    name = config.name
    tensors: dict[str, _Node] = {}
    for idx, step in enumerate(config.ensemble_scheduling.step):
        if not step.model_name:
            raise fail(f"must specify 'model_name' in step {idx} of ensemble '{name}'")
        if len(step.input_map) == 0:
            raise fail(f"must specify 'input_map' in step {idx} of ensemble '{name}'")
        if len(step.output_map) == 0:
            raise fail(f"must specify 'output_map' in step {idx} of ensemble '{name}'")
        outputs = []
        for ens_tensor in step.output_map.values():
            node = tensors.setdefault(ens_tensor, _Node())
            if node.produced:
                raise fail(f"ensemble tensor '{ens_tensor}' can appear in an output map only "
                           f"once for ensemble '{name}' step {idx}", ens_tensor)
            node.produced = True
            outputs.append(node)
        for ens_tensor in step.input_map.values():
            node = tensors.setdefault(ens_tensor, _Node())
            for out in outputs:
                out.prev.append(node)
                node.next.append(out)
    return tensors


def validate_ensemble_steps(config: mc.ModelConfig,
                            step_configs: Mapping[str, mc.ModelConfig]) -> None:
    """Check each step's input_map keys / output_map keys against the step model's
    inputs / outputs, and that tensors flowing between them agree on data type. Steps
    whose model is not in `step_configs` are skipped. Call once the step models load."""
    name = config.name
    types: dict[str, tuple[int, str]] = {
        t.name: (t.data_type, f"ensemble input '{t.name}'") for t in config.input
    }
    for idx, step in enumerate(config.ensemble_scheduling.step):
        model = step_configs.get(step.model_name)
        if model is None:
            continue
        where = f"ensemble '{name}' step {idx} (model '{step.model_name}')"
        model_inputs = {t.name: t for t in model.input}
        model_outputs = {t.name: t for t in model.output}
        for model_tensor in step.input_map:
            if model_tensor not in model_inputs:
                raise fail(f"{where}: input_map names '{model_tensor}', which is not an input "
                           f"of model '{step.model_name}'", model_tensor)
        for model_tensor, ens_tensor in step.output_map.items():
            out = model_outputs.get(model_tensor)
            if out is None:
                raise fail(f"{where}: output_map names '{model_tensor}', which is not an "
                           f"output of model '{step.model_name}'", model_tensor)
            types[ens_tensor] = (out.data_type, f"output '{model_tensor}' of "
                                 f"'{step.model_name}'")
        missing = [t.name for t in model.input
                   if not t.optional and t.name not in step.input_map]
        if missing:
            raise fail(f"{where}: required input(s) {', '.join(missing)} of model "
                       f"'{step.model_name}' are not mapped")
    for idx, step in enumerate(config.ensemble_scheduling.step):
        model = step_configs.get(step.model_name)
        if model is None:
            continue
        model_inputs = {t.name: t for t in model.input}
        for model_tensor, ens_tensor in step.input_map.items():
            known = types.get(ens_tensor)
            if known and known[0] != model_inputs[model_tensor].data_type:
                raise fail(
                    f"ensemble '{name}' step {idx}: tensor '{ens_tensor}' is "
                    f"{mc.DataType.Name(known[0])} ({known[1]}) but input '{model_tensor}' of "
                    f"'{step.model_name}' expects "
                    f"{mc.DataType.Name(model_inputs[model_tensor].data_type)}", ens_tensor)
    for tensor in config.output:
        known = types.get(tensor.name)
        if known and known[0] != tensor.data_type:
            raise fail(f"ensemble '{name}' output '{tensor.name}' is declared "
                       f"{mc.DataType.Name(tensor.data_type)} but {known[1]} is "
                       f"{mc.DataType.Name(known[0])}", tensor.name)
