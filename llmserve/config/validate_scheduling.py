"""Validation of the sequence batcher section: control tensors (START, END, READY, CORRID),
implicit state, and the oldest-first strategy, as Triton's
GetBooleanSequenceControlProperties / GetTypedSequenceControlProperties.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config.errors import fail

_CTRL = mc.ModelSequenceBatching.Control
_BOOL_KINDS = (_CTRL.CONTROL_SEQUENCE_START, _CTRL.CONTROL_SEQUENCE_READY,
               _CTRL.CONTROL_SEQUENCE_END)
_CORRID_TYPES = (mc.TYPE_UINT64, mc.TYPE_INT64, mc.TYPE_UINT32, mc.TYPE_INT32, mc.TYPE_STRING)


def validate_sequence_batching(config: mc.ModelConfig) -> None:
    sb, model = config.sequence_batching, config.name
    seen_kinds: dict[int, str] = {}
    for ci in sb.control_input:
        if not ci.name:
            raise fail(f"sequence batching control tensor must have a name for {model}")
        if len(ci.control) == 0:
            raise fail(f"sequence batching control tensor '{ci.name}' must specify at least "
                       f"one control for {model}", ci.name)
        for control in ci.control:
            kind_name = _CTRL.Kind.Name(control.kind)
            if control.kind in seen_kinds:
                raise fail(f"sequence batching specifies multiple {kind_name} tensors for "
                           f"{model}", ci.name)
            seen_kinds[control.kind] = ci.name
            if control.kind in _BOOL_KINDS:
                _check_boolean_control(control, kind_name, model, ci.name)
            else:
                _check_corrid_control(control, kind_name, model, ci.name)
    seen_states: set[str] = set()
    for state in sb.state:
        _check_state(state, config)
        if state.input_name in seen_states:
            raise fail(f"State input name '{state.input_name}' specified more than once.",
                       state.input_name)
        seen_states.add(state.input_name)
    if sb.HasField("oldest"):
        for size in sb.oldest.preferred_batch_size:
            if size <= 0 or size > config.max_batch_size:
                raise fail(f"sequence batching 'oldest' preferred batch size {size} must be in "
                           f"[1, max_batch_size {config.max_batch_size}] for {model}")
        if sb.oldest.max_candidate_sequences < 0:
            raise fail(f"sequence batching 'oldest' max_candidate_sequences must be >= 0 for "
                       f"{model}")
    if sb.HasField("direct") and sb.direct.minimum_slot_utilization > 1.0:
        raise fail(f"sequence batching 'direct' minimum_slot_utilization must be in [0, 1] "
                   f"for {model}")


def _check_boolean_control(control, kind_name: str, model: str, tensor: str) -> None:
    lists = {
        "int32_false_true": control.int32_false_true,
        "fp32_false_true": control.fp32_false_true,
        "bool_false_true": control.bool_false_true,
    }
    given = [name for name, values in lists.items() if len(values) > 0]
    if not given:
        raise fail(f"sequence batching must specify either 'int32_false_true', "
                   f"'fp32_false_true' or 'bool_false_true' for {kind_name} for {model}",
                   tensor)
    if len(given) > 1:
        raise fail(f"sequence batching specifies both '{given[0]}' and '{given[1]}' for "
                   f"{kind_name} for {model}", tensor)
    if len(lists[given[0]]) != 2:
        raise fail(f"sequence batching control '{given[0]}' must have exactly 2 entries for "
                   f"{kind_name} for {model}", tensor)


def _check_corrid_control(control, kind_name: str, model: str, tensor: str) -> None:
    if control.int32_false_true or control.fp32_false_true or control.bool_false_true:
        raise fail(f"sequence batching must not specify 'int32_false_true', "
                   f"'fp32_false_true' or 'bool_false_true' for {kind_name} for {model}",
                   tensor)
    if control.data_type not in _CORRID_TYPES:
        raise fail(f"sequence batching control tensor '{tensor}' must specify data_type "
                   f"TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 or TYPE_STRING for "
                   f"{kind_name} for {model}", tensor)


def _check_state(state, config: mc.ModelConfig) -> None:
    model = config.name
    if not state.input_name or not state.output_name:
        raise fail(f"sequence batching state must specify 'input_name' and 'output_name' "
                   f"for {model}")
    if state.data_type == mc.TYPE_INVALID:
        raise fail(f"sequence batching state '{state.input_name}' must specify 'data_type' "
                   f"for {model}", state.input_name)
    if len(state.dims) == 0:
        raise fail(f"sequence batching state '{state.input_name}' must specify 'dims' for "
                   f"{model}", state.input_name)
    for dim in state.dims:
        if dim < 1 and dim != -1:
            raise fail(f"sequence batching state '{state.input_name}' dimension must be "
                       f"integer >= 1, or -1 to indicate a variable-size dimension for "
                       f"{model}", state.input_name)
    if state.use_growable_memory and not state.use_same_buffer_for_input_output:
        raise fail(f"In order to 'use_growable_memory', you must also enable "
                   f"'use_single_buffer' for state input name '{state.input_name}'.",
                   state.input_name)
    if len(state.initial_state) > 1:
        raise fail(f"initial_state field for state input '{state.input_name}' must contain "
                   f"exactly one or zero element. Found '{len(state.initial_state)}' elements.",
                   state.input_name)
    if len(state.initial_state) == 1:
        _check_initial_state(state, state.initial_state[0])


def _check_initial_state(state: mc.ModelSequenceBatching.State,
                         init: mc.ModelSequenceBatching.InitialState) -> None:
    """Triton's GenerateInitialStateData checks (the data file is read at load)."""
    name = state.input_name
    if init.data_type != state.data_type:
        raise fail(f"The data type used for 'initial_state' field of state '{name}' does not "
                   "match the state data type.", name)
    if not init.name:
        raise fail(f"Field 'name' must be set when using initial_state for state input "
                   f"'{name}'.", name)
    if len(init.dims) != len(state.dims):
        raise fail(f"Number of dimensions in 'initial_state' doesn't match the size of 'state' "
                   f"dimensions for state input '{name}'. {len(init.dims)} != "
                   f"{len(state.dims)}", name)
    for init_dim, state_dim in zip(init.dims, state.dims, strict=True):
        if init_dim == -1:
            raise fail(f"'initial_state' field for state input name '{name}' contains variable "
                       "dimensions.", name)
        if state_dim != -1 and init_dim != state_dim:
            raise fail(f"'initial_state' dim for input name '{name}' doesn't match 'state' dim "
                       f"description. {init_dim} != {state_dim}", name)
