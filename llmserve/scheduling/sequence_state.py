"""Implicit sequence state (`sequence_batching { state [...] }`): each sequence slot keeps
its state tensors; a request's input state is the output state of the sequence's previous
request (or the initial state on START), as Triton's SequenceStates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core import datatypes
from llmserve.core.errors import InternalError, InvalidArgument
from llmserve.core.types import Tensor
from llmserve.scheduling.request import SchedRequest


@dataclass(slots=True)
class StateSpec:
    input_name: str
    output_name: str
    datatype: str  # API name
    initial: np.ndarray  # with the batch dimension when the model batches


def blank(datatype: str, shape: list[int]) -> np.ndarray:
    """Zeros (empty strings for BYTES) of a type and shape."""
    if datatype == "BYTES":
        data = np.empty(shape, np.object_)
        data.fill(b"")
        return data
    return np.zeros(shape, datatypes.from_api_name(datatype).numpy)


def _from_file(path: Path, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """Row-major raw data (BYTES: 4-byte length-prefixed strings), as Triton reads it."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"failed to read initial state file '{path}' for state input "
                              f"'{name}': {e.strerror}") from None
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        data = datatypes.deserialize_bytes_tensor(raw)
        if data.size != count:
            raise InvalidArgument(f"initial state file '{path}' for state input '{name}' holds "
                                  f"{data.size} strings, expected {count}")
        return data.reshape(shape)
    dtype = datatypes.from_api_name(datatype).numpy
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgument(f"initial state file '{path}' for state input '{name}' is "
                              f"{len(raw)} bytes, expected {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def load_state_specs(config: mc.ModelConfig, model_dir: Path) -> list[StateSpec]:
    """The states of a model with their initial values; raises InvalidArgument for an
    initial state that does not fit (Triton's GenerateInitialStateData)."""
    lead = [1] if config.max_batch_size > 0 else []
    specs = []
    for state in config.sequence_batching.state:
        datatype = datatypes.config_to_api(mc.DataType.Name(state.data_type))
        # variable dims start at 1 (Triton); the data is zeros where Triton leaves it unset
        initial = blank(datatype, lead + [1 if d == -1 else int(d) for d in state.dims])
        if len(state.initial_state) == 1:
            init = state.initial_state[0]
            shape = lead + [int(d) for d in init.dims]
            if init.WhichOneof("state_data") == "data_file":
                path = model_dir / "initial_state" / init.data_file
                initial = _from_file(path, datatype, shape, state.input_name)
            else:
                initial = blank(datatype, shape)
        specs.append(StateSpec(state.input_name, state.output_name, datatype, initial))
    return specs


class SequenceStates:
    """The state tensors of the sequence in one slot (input name -> array)."""

    __slots__ = ("specs", "values")

    def __init__(self, specs: list[StateSpec], values: dict[str, np.ndarray] | None = None):
        self.specs = specs
        self.values = values if values is not None else {s.input_name: s.initial.copy()
                                                         for s in specs}

    def null_like(self) -> SequenceStates:
        """Placeholder state for a padding request: same shapes, never written back."""
        return SequenceStates(self.specs, {s.input_name: blank(s.datatype, list(
            self.values[s.input_name].shape)) for s in self.specs})

    def inputs(self) -> dict[str, Tensor]:
        return {s.input_name: Tensor(s.input_name, s.datatype, self.values[s.input_name])
                for s in self.specs}

    def shapes(self) -> tuple:
        return tuple(self.values[s.input_name].shape for s in self.specs)

    def update(self, outputs: dict[str, np.ndarray], model: str) -> None:
        """The output states of one request become the sequence's next input states; a
        state the model did not produce keeps its value."""
        for s in self.specs:
            value = outputs.get(s.output_name)
            if value is None:
                continue
            expected = datatypes.from_api_name(s.datatype)
            array = np.asarray(value)
            ok = array.dtype.kind in "OSU" if s.datatype == "BYTES" else array.dtype == expected.numpy
            if not ok:
                raise InternalError(f"unexpected datatype {array.dtype} for state output "
                                    f"'{s.output_name}' of model '{model}', expecting "
                                    f"{s.datatype}")
            self.values[s.input_name] = np.array(array, copy=True)


def save_states(sreq: SchedRequest, outputs: dict[str, np.ndarray], model: str) -> None:
    """Called by backends with a request's outputs after a successful execution."""
    if sreq.sequence_states is not None:
        sreq.sequence_states.update(outputs, model)
