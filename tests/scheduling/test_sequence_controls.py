"""The sequence batcher's control tensors for every control kind, and its implicit-state
bookkeeping, without a server."""

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import InternalError, InvalidArgument
from llmserve.scheduling.sequence_controls import SequenceControls, sequence_input_types
from llmserve.scheduling.sequence_state import SequenceStates, load_state_specs


def _config(text: str) -> mc.ModelConfig:
    return text_format.Parse('name: "m"\n' + text, mc.ModelConfig())


def _controls(corrid_type: str, batch: int = 2) -> str:
    return f"""max_batch_size: {batch}
sequence_batching {{ control_input [
  {{ name: "S" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 5, 7 ] }} ] }},
  {{ name: "E" control [ {{ kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0.5, 1.5 ] }} ] }},
  {{ name: "R" control [ {{ kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] }} ] }},
  {{ name: "C" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid_type} }} ] }} ] }}
"""


@pytest.mark.parametrize("corrid_type, api, value, expected", [
    ("TYPE_UINT64", "UINT64", 2**63 + 3, 2**63 + 3),
    ("TYPE_INT64", "INT64", 2**64 - 1, -1),
    ("TYPE_UINT32", "UINT32", 2**32 + 9, 9),
    ("TYPE_INT32", "INT32", 42, 42),
    ("TYPE_STRING", "BYTES", "abc", b"abc"),
])
def test_control_tensors_for_each_kind(corrid_type, api, value, expected):
    controls = SequenceControls(_config(_controls(corrid_type)))
    t = controls.tensors(flags=1, corrid=value)
    assert t["S"].datatype == "INT32" and t["S"].data.tolist() == [[7]]
    assert t["E"].datatype == "FP32" and t["E"].data.tolist() == [[0.5]]
    assert t["R"].datatype == "BOOL" and t["R"].data.tolist() == [[True]]
    assert t["C"].datatype == api and t["C"].data.shape == (1, 1)
    assert t["C"].data.reshape(-1)[0] == expected
    end = controls.tensors(flags=2, corrid=value)
    assert end["S"].data.tolist() == [[5]] and end["E"].data.tolist() == [[1.5]]
    padding = controls.tensors(flags=3, corrid=value, ready=False)
    assert padding["S"].data.tolist() == [[5]] and padding["R"].data.tolist() == [[False]]
    assert padding["C"].data.reshape(-1)[0] in (0, b"")


def test_unbatched_controls_have_shape_one_and_id_kinds_are_checked():
    controls = SequenceControls(_config(_controls("TYPE_UINT64", batch=0)))
    assert controls.tensors(1, 9)["S"].data.shape == (1,)
    with pytest.raises(InvalidArgument, match="data-type is 'BYTES', but model 'm' expects"):
        controls.check_correlation_id("text")
    strings = SequenceControls(_config(_controls("TYPE_STRING")))
    with pytest.raises(InvalidArgument, match="data-type is 'UINT64', but model 'm' expects "
                                              "'BYTES'"):
        strings.check_correlation_id(5)
    types = sequence_input_types(_config(_controls("TYPE_INT64")))
    assert types == {"S": "TYPE_INT32", "E": "TYPE_FP32", "R": "TYPE_BOOL", "C": "TYPE_INT64"}


def test_states_start_from_initial_values_and_take_outputs(tmp_path):
    config = _config("""max_batch_size: 4
sequence_batching { state [
  { input_name: "A" output_name: "A_OUT" data_type: TYPE_INT32 dims: [ -1 ] },
  { input_name: "B" output_name: "B_OUT" data_type: TYPE_FP32 dims: [ 2 ]
    initial_state { name: "b" data_type: TYPE_FP32 dims: [ 2 ] data_file: "b.bin" } } ] }""")
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "b.bin").write_bytes(np.array([1.5, 2.5], "<f4").tobytes())
    states = SequenceStates(load_state_specs(config, tmp_path))
    inputs = states.inputs()
    assert inputs["A"].data.tolist() == [[0]]  # variable dims start at 1
    assert inputs["B"].data.tolist() == [[1.5, 2.5]]
    states.update({"A_OUT": np.array([[1, 2, 3]], np.int32)}, "m")
    assert states.inputs()["A"].data.tolist() == [[1, 2, 3]]
    assert states.inputs()["B"].data.tolist() == [[1.5, 2.5]]  # not produced: kept
    assert states.null_like().inputs()["A"].data.tolist() == [[0, 0, 0]]
    with pytest.raises(InternalError, match="state output 'A_OUT'"):
        states.update({"A_OUT": np.array([[1.0]], np.float32)}, "m")
    (tmp_path / "initial_state" / "b.bin").write_bytes(b"\0" * 4)
    with pytest.raises(InvalidArgument, match="is 4 bytes, expected 8"):
        load_state_specs(config, tmp_path)
