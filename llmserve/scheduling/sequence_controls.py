"""The sequence batcher's control tensors (CONTROL_SEQUENCE_START, END, READY, CORRID) as
Triton builds them for each request of a batch, and the extra tensors a sequence model
takes or yields beside its config inputs and outputs (controls, implicit state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core import datatypes
from llmserve.core.errors import InvalidArgument
from llmserve.core.types import Tensor

SEQUENCE_START = 1
SEQUENCE_END = 2

_CTRL = mc.ModelSequenceBatching.Control
_BOOL_KINDS = {_CTRL.CONTROL_SEQUENCE_START: "start", _CTRL.CONTROL_SEQUENCE_END: "end",
               _CTRL.CONTROL_SEQUENCE_READY: "ready"}
_INTEGER_CORRID = ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32")


@dataclass(frozen=True, slots=True)
class _BoolControl:
    name: str
    datatype: str  # API name: INT32, FP32 or BOOL
    false: np.ndarray
    true: np.ndarray


def _bool_control(name: str, control: mc.ModelSequenceBatching.Control) -> _BoolControl:
    if len(control.int32_false_true):
        dtype, values = "INT32", np.asarray(control.int32_false_true, np.int32)
    elif len(control.fp32_false_true):
        dtype, values = "FP32", np.asarray(control.fp32_false_true, np.float32)
    else:
        dtype, values = "BOOL", np.asarray(control.bool_false_true, np.bool_)
    return _BoolControl(name, dtype, values[0:1], values[1:2])


def uses_sequence_batcher(config: mc.ModelConfig) -> bool:
    """A model whose requests go through the sequence batcher (iterative sequences keep
    the request queue's rescheduling path)."""
    return (config.HasField("sequence_batching")
            and not config.sequence_batching.iterative_sequence)


class SequenceControls:
    """Builds the control tensors a request carries into the model: each is shape [1]
    (plus the batch dimension when the model batches), as Triton's sequence batcher
    sets them."""

    def __init__(self, config: mc.ModelConfig):
        self.model = config.name
        self.lead = [1] if config.max_batch_size > 0 else []
        self.bools: dict[str, _BoolControl] = {}
        self.corrid: tuple[str, str] | None = None  # (tensor name, config type name)
        for ci in config.sequence_batching.control_input:
            for control in ci.control:
                if control.kind in _BOOL_KINDS:
                    self.bools[_BOOL_KINDS[control.kind]] = _bool_control(ci.name, control)
                elif control.kind == _CTRL.CONTROL_SEQUENCE_CORRID:
                    self.corrid = (ci.name, mc.DataType.Name(control.data_type))

    def check_correlation_id(self, corrid: int | str) -> None:
        """Triton's ValidateCorrelationId: the id's kind must suit the CORRID tensor."""
        if self.corrid is None:
            return
        name, ctype = self.corrid
        if isinstance(corrid, str) and ctype != "TYPE_STRING":
            given = "BYTES"
        elif isinstance(corrid, int) and ctype not in _INTEGER_CORRID:
            given = "UINT64"
        else:
            return
        raise InvalidArgument(
            f"sequence batching control '{name}' data-type is '{given}', but model "
            f"'{self.model}' expects '{datatypes.config_to_api(ctype)}'")

    def tensors(self, flags: int, corrid: int | str, ready: bool = True) -> dict[str, Tensor]:
        """The control tensors for one request; a not-ready (padding) slot gets false for
        every flag and correlation id 0, as in Triton."""
        start = ready and bool(flags & SEQUENCE_START)
        end = ready and bool(flags & SEQUENCE_END)
        out: dict[str, Tensor] = {}
        for kind, on in (("start", start), ("end", end), ("ready", ready)):
            control = self.bools.get(kind)
            if control is not None:
                value = control.true if on else control.false
                out[control.name] = Tensor(control.name, control.datatype,
                                           value.reshape(self.lead + [1]).copy())
        if self.corrid is not None:
            name, ctype = self.corrid
            out[name] = self._corrid_tensor(name, ctype, corrid if ready else 0)
        return out

    def _corrid_tensor(self, name: str, ctype: str, corrid: int | str) -> Tensor:
        api = datatypes.config_to_api(ctype)
        shape = self.lead + [1]
        if ctype == "TYPE_STRING":
            text = corrid if isinstance(corrid, str) else ("" if corrid == 0 else str(corrid))
            data = np.empty(shape, np.object_)
            data.reshape(-1)[0] = text.encode()
            return Tensor(name, api, data)
        value = corrid if isinstance(corrid, int) else 0
        # Triton copies the low bytes of the unsigned 64-bit id into narrower tensors
        raw = np.asarray([value & 0xFFFFFFFFFFFFFFFF], np.uint64)
        return Tensor(name, api, raw.astype(datatypes.from_api_name(api).numpy).reshape(shape))


def sequence_input_types(config: mc.ModelConfig) -> dict[str, str]:
    """Inputs the sequence batcher adds to requests (controls and implicit state inputs),
    by name, with their config type names; empty for other models."""
    if not uses_sequence_batcher(config):
        return {}
    out: dict[str, str] = {}
    for ci in config.sequence_batching.control_input:
        for control in ci.control:
            if control.kind == _CTRL.CONTROL_SEQUENCE_CORRID:
                out[ci.name] = mc.DataType.Name(control.data_type)
            elif len(control.int32_false_true):
                out[ci.name] = "TYPE_INT32"
            elif len(control.fp32_false_true):
                out[ci.name] = "TYPE_FP32"
            else:
                out[ci.name] = "TYPE_BOOL"
    for state in config.sequence_batching.state:
        out[state.input_name] = mc.DataType.Name(state.data_type)
    return out


def state_output_types(config: mc.ModelConfig) -> dict[str, str]:
    """Implicit state outputs a backend must fetch from the model, with their types."""
    if not uses_sequence_batcher(config):
        return {}
    return {s.output_name: mc.DataType.Name(s.data_type) for s in config.sequence_batching.state}
