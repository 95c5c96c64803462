"""Invalid configurations in the spirit of Triton's L0_model_config: each must be refused
with a set message; valid ones from the seed must pass."""

import pytest

from llmserve.config.complete import (
    drop_duplicate_outputs,
    normalize_config,
    normalize_instance_groups,
)
from llmserve.config.errors import ConfigError
from llmserve.config.parse import parse_config_text
from llmserve.config.platforms import complete_backend_fields
from llmserve.config.validate import validate_config


def resolve(text: str, name: str = "m", gpus=()):
    config = parse_config_text(text)
    complete_backend_fields(config, name, None, [])
    drop_duplicate_outputs(config)
    normalize_config(config)
    normalize_instance_groups(config, list(gpus))
    validate_config(config, list(gpus))
    return config


PY = 'backend: "python"\n'
IO = ('input [ { name: "I" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
      'output [ { name: "O" data_type: TYPE_FP32 dims: [ 4 ] } ]\n')


def tensor(name="I", dims="[ 4 ]", extra="", kind="input", dtype="TYPE_FP32"):
    return f'{kind} [ {{ name: "{name}" data_type: {dtype} dims: {dims} {extra} }} ]\n'


SEQ_START = 'control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ]'
STATE = ('sequence_batching { state [ { input_name: "si" output_name: "so" '
         'data_type: TYPE_FP32 ')


def state_init(dims: str, dtype: str, init_dims: str, name: str = "i") -> str:
    """A model with one FP32 state and an initial_state of the given type and dims."""
    named = f'name: "{name}" ' if name else ""
    return (PY + IO + STATE + f"dims: {dims} initial_state {{ {named}data_type: {dtype} "
            f"dims: {init_dims} zero_data: true }} }} ] }}")

BAD = [
    ("negative batch", PY + "max_batch_size: -1\n" + IO,
     "'max_batch_size' must be non-negative value for m"),
    ("zero dim", PY + tensor(dims="[ 0 ]"), "'I' dimension must be integer >= 1, or -1"),
    ("dim -2", PY + tensor(dims="[ 4, -2 ]"), "dimension must be integer >= 1, or -1"),
    ("no dims", PY + 'input [ { name: "I" data_type: TYPE_FP32 } ]', "must specify 'dims'"),
    ("no data type", PY + 'input [ { name: "I" dims: [ 1 ] } ]', "must specify 'data_type'"),
    ("no name", PY + 'output [ { data_type: TYPE_FP32 dims: [ 1 ] } ]',
     "model output must specify 'name'"),
    ("reshape size", PY + tensor(extra="reshape: { shape: [ 3 ] }"),
     "has different size for dims [4] and reshape [3]"),
    ("reshape wildcard count", PY + "max_batch_size: 2\n"
     + tensor(dims="[ 2, -1 ]", extra="reshape: { shape: [ -1, -1 ] }"),
     "different number of variable-size dimensions"),
    ("reshape wildcard trunks", PY + tensor(dims="[ 2, 4, -1, 6 ]",
                                            extra="reshape: { shape: [ 8, -1, 2, 6 ] }"),
     "has different size for dims"),
    ("empty reshape unbatched", PY + tensor(dims="[ 1 ]", extra="reshape: { shape: [ ] }"),
     "cannot have empty reshape for non-batching model"),
    ("reshape zero", PY + tensor(dims="[ 4 ]", extra="reshape: { shape: [ 0, 4 ] }"),
     "reshape dimensions must be integer >= 1"),
    ("duplicate input", PY + tensor() + tensor(), "'I' is declared more than once"),
    ("conflicting output", PY + tensor(kind="output") + tensor(kind="output", dims="[ 5 ]"),
     "'I' is declared twice with different settings"),
    ("shape tensor python", PY + tensor(extra="is_shape_tensor: true"),
     "shape tensors are only supported for TensorRT platform"),
    ("non-linear onnx", 'platform: "onnxruntime_onnx"\n'
     + tensor(extra="is_non_linear_format_io: true"),
     "non-linear IO format is only supported for the TensorRT platform"),
    ("nchw rank", PY + tensor(dims="[ 3, 224 ]", extra="format: FORMAT_NCHW"),
     "NHWC/NCHW require 3 dims"),
    ("string on tensorrt", 'platform: "tensorrt_plan"\n' + tensor(dtype="TYPE_STRING"),
     "TYPE_STRING, which the tensorrt backend does not support"),
    ("bf16 on onnx", 'platform: "onnxruntime_onnx"\n' + tensor(dtype="TYPE_BF16"),
     "TYPE_BF16, which the onnxruntime backend does not support"),
    ("cpu with gpus", PY + IO + "instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]",
     "instance group m_0 of model m has kind KIND_CPU but specifies one or more GPUs"),
    ("gpu without gpus", PY + IO + "instance_group [ { kind: KIND_GPU } ]",
     "has kind KIND_GPU but no GPUs are available"),
    ("model kind with gpus", PY + IO + "instance_group [ { kind: KIND_MODEL gpus: [ 0 ] } ]",
     "has kind KIND_MODEL but specifies one or more GPUs"),
    ("profile not trt", PY + IO + 'instance_group [ { kind: KIND_CPU profile: [ "0" ] } ]',
     "specifies profile field which is only supported for TensorRT models"),
    ("bad profile", 'platform: "tensorrt_plan"\n' + IO
     + 'instance_group [ { kind: KIND_CPU profile: [ "-1" ] } ]', "specifies invalid profile -1"),
    ("global and local resource", PY + IO + """instance_group [
       { kind: KIND_CPU rate_limiter { resources [ { name: "R" count: 1 } ] } },
       { kind: KIND_CPU rate_limiter { resources [ { name: "R" global: true count: 1 } ] } } ]""",
     "resource 'R' of model m is declared both global and per-device"),
    ("preferred > max", PY + "max_batch_size: 4\n" + IO
     + "dynamic_batching { preferred_batch_size: [ 2, 8 ] }",
     "dynamic batching preferred size must be <= max batch size for m"),
    ("preferred zero", PY + "max_batch_size: 4\n" + IO
     + "dynamic_batching { preferred_batch_size: [ 0 ] }",
     "dynamic batching preferred size must be positive for m"),
    ("default priority 0", PY + "max_batch_size: 4\n" + IO
     + "dynamic_batching { priority_levels: 2 }",
     "default priority level must be in range [1, 2] for m"),
    ("default priority too high", PY + "max_batch_size: 4\n" + IO
     + "dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
     "default priority level must be in range [1, 2]"),
    ("queue policy level", PY + "max_batch_size: 4\n" + IO
     + "dynamic_batching { priority_levels: 2 default_priority_level: 1 "
       "priority_queue_policy { key: 3 value { max_queue_size: 1 } } }",
     "priority queue policy must have priority level in range [1, 2]"),
    ("preserve ordering levels", PY + "max_batch_size: 4\n" + IO
     + "dynamic_batching { preserve_ordering: true priority_levels: 2 "
       "default_priority_level: 1 }",
     "Only one priority level is allowed when 'preserve_ordering' is true"),
    ("preserve ordering delay", PY + "max_batch_size: 4\n" + IO
     + "dynamic_batching { preserve_ordering: true default_queue_policy { "
       "timeout_action: DELAY default_timeout_microseconds: 100 } }",
     "Queue policy can not have DELAY as timeout action"),
    ("control no name", PY + IO + f"sequence_batching {{ control_input [ {{ {SEQ_START} }} ] }}",
     "sequence batching control tensor must have a name for m"),
    ("control empty", PY + IO + 'sequence_batching { control_input [ { name: "S" } ] }',
     "sequence batching control tensor 'S' must specify at least one control"),
    ("start no values", PY + IO + 'sequence_batching { control_input [ { name: "S" '
     'control [ { kind: CONTROL_SEQUENCE_START } ] } ] }',
     "must specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for "
     "CONTROL_SEQUENCE_START"),
    ("start two lists", PY + IO + 'sequence_batching { control_input [ { name: "S" control [ '
     '{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] fp32_false_true: [ 0, 1 ] } '
     '] } ] }', "specifies both 'int32_false_true' and 'fp32_false_true'"),
    ("start three values", PY + IO + 'sequence_batching { control_input [ { name: "S" control ['
     ' { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1, 1 ] } ] } ] }',
     "'int32_false_true' must have exactly 2 entries for CONTROL_SEQUENCE_END"),
    ("two starts", PY + IO + f'sequence_batching {{ control_input [ {{ name: "A" {SEQ_START} '
     f'}}, {{ name: "B" {SEQ_START} }} ] }}',
     "sequence batching specifies multiple CONTROL_SEQUENCE_START tensors for m"),
    ("corrid type", PY + IO + 'sequence_batching { control_input [ { name: "C" control [ '
     '{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ] }',
     "must specify data_type TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 or TYPE_STRING"),
    ("corrid values", PY + IO + 'sequence_batching { control_input [ { name: "C" control [ '
     '{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 int32_false_true: [ 0, 1 ] } ] '
     '} ] }', "must not specify 'int32_false_true'"),
    ("state dims", PY + IO + 'sequence_batching { state [ { input_name: "si" output_name: "so"'
     ' data_type: TYPE_FP32 dims: [ 0 ] } ] }', "state 'si' dimension must be integer >= 1"),
    ("initial state type", state_init("[ -1 ]", "TYPE_INT32", "[ 2 ]"),
     "The data type used for 'initial_state' field of state 'si' does not match the state "
     "data type."),
    ("initial state name", state_init("[ -1 ]", "TYPE_FP32", "[ 2 ]", name=""),
     "Field 'name' must be set when using initial_state for state input 'si'."),
    ("initial state rank", state_init("[ -1 ]", "TYPE_FP32", "[ 2, 2 ]"),
     "Number of dimensions in 'initial_state' doesn't match the size of 'state' dimensions "
     "for state input 'si'. 2 != 1"),
    ("initial state variable", state_init("[ -1 ]", "TYPE_FP32", "[ -1 ]"),
     "'initial_state' field for state input name 'si' contains variable dimensions."),
    ("initial state dim", state_init("[ 3 ]", "TYPE_FP32", "[ 2 ]"),
     "'initial_state' dim for input name 'si' doesn't match 'state' dim description. 2 != 3"),
    ("two initial states", PY + IO + STATE + 'dims: [ 1 ] initial_state [ { name: "i" '
     'data_type: TYPE_FP32 dims: [ 1 ] zero_data: true }, { name: "j" data_type: TYPE_FP32 '
     'dims: [ 1 ] zero_data: true } ] } ] }',
     "initial_state field for state input 'si' must contain exactly one or zero element. "
     "Found '2' elements."),
    ("growable memory", PY + IO + STATE + 'dims: [ 1 ] use_growable_memory: true } ] }',
     "In order to 'use_growable_memory', you must also enable 'use_single_buffer' for state "
     "input name 'si'."),
    ("state twice", PY + IO + STATE + 'dims: [ 1 ] }, { input_name: "si" output_name: "so2" '
     'data_type: TYPE_FP32 dims: [ 1 ] } ] }', "State input name 'si' specified more than once."),
    ("no backend", 'default_model_filename: "x.bin"\n' + IO,
     "must specify 'platform' or 'backend' for 'm'"),
    ("unknown platform", 'platform: "caffe2_netdef"\n' + IO,
     "unexpected platform type 'caffe2_netdef' for m"),
    ("platform backend pair", 'platform: "tensorrt_plan"\nbackend: "onnxruntime"\n' + IO,
     "unexpected 'platform' and 'backend' pair, got:tensorrt_plan, onnxruntime"),
    ("ensemble with backend", 'platform: "ensemble"\nbackend: "python"\n' + IO,
     "Ensemble model 'm' must have platform type 'ensemble' and empty backend type"),
    ("ensemble without steps", 'platform: "ensemble"\n' + IO,
     "ensemble scheduling must be set for ensemble m"),
    ("steps without ensemble", PY + IO + 'ensemble_scheduling { step [ { model_name: "x" } ] }',
     "ensemble scheduling cannot be set for model 'm' whose platform is not ensemble"),
    ("decoupled cache", PY + IO + "model_transaction_policy { decoupled: true }\n"
     "response_cache { enable: true }",
     "Response Cache does not currently support model m with 'decoupled' transaction policy"),
    ("sequence cache", PY + IO + "sequence_batching {}\nresponse_cache { enable: true }",
     "Response Cache does not currently support model m with sequence batching scheduler"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_invalid_configs_are_refused(text, expected):
    with pytest.raises(ConfigError) as e:
        resolve(text)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_kind_gpu_checks_with_gpus():
    text = PY + IO + "instance_group [ { kind: KIND_GPU gpus: [ 3 ] } ]"
    with pytest.raises(ConfigError, match="specifies invalid or unsupported gpu id 3"):
        resolve(text, gpus=(0, 1))


GOOD = [
    ("seed minimal", """platform: "tensorrt_plan"
max_batch_size: 8
input [ { name: "input0" data_type: TYPE_FP32 dims: [ 16 ] },
        { name: "input1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "output0" data_type: TYPE_FP32 dims: [ 16 ] } ]
version_policy: { all { }}"""),
    ("scalar via reshape", PY + "max_batch_size: 8\n"
     + tensor(dims="[ 1 ]", extra="reshape: { shape: [ ] }")
     + tensor(kind="output", dims="[ 1 ]", extra="reshape: { shape: [ ] }")),
    ("reshape with wildcards", PY + tensor(dims="[ 2, 4, -1, 6 ]",
                                           extra="reshape: { shape: [ 8, -1, 1, 6 ] }")),
    ("shape tensor", """name: "myshapetensormodel"
platform: "tensorrt_plan"
max_batch_size: 8
input [ { name: "input0" data_type: TYPE_FP32 dims: [ 1 , 3] },
        { name: "input1" data_type: TYPE_INT32 dims: [ 2 ] is_shape_tensor: true } ]
output [ { name: "output0" data_type: TYPE_FP32 dims: [ 1 , 3] } ]"""),
    ("non-linear", """platform: "tensorrt_plan"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP16 dims: [ 3,224,224 ]
          is_non_linear_format_io: true } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP16 dims: [ 1,3 ] } ]"""),
    ("input and output share a name", PY + tensor(name="X") + tensor(name="X", kind="output")),
    ("sequence batcher", PY + "max_batch_size: 4\n" + IO + """sequence_batching {
  oldest { max_candidate_sequences: 4 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] }
    ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] } ]
  state [ { input_name: "S_IN" output_name: "S_OUT" data_type: TYPE_FP32 dims: [ -1 ] } ] }"""),
    ("priorities", PY + "max_batch_size: 4\n" + IO + """dynamic_batching {
  preferred_batch_size: [ 2, 4 ] priority_levels: 2 default_priority_level: 2
  priority_queue_policy { key: 1 value { timeout_action: DELAY
                                          default_timeout_microseconds: 10 } } }"""),
    ("no inputs at all", PY),
]


@pytest.mark.parametrize("text", [c[1] for c in GOOD], ids=[c[0] for c in GOOD])
def test_valid_configs_pass(text):
    resolve(text)


def test_seed_rate_limiter_example_config_validates_on_three_gpus():
    """The config side only; what the limiter does with it: tests/scheduling/test_rate_limiter.py."""
    text = PY + IO + """instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0, 1, 2 ]
      rate_limiter { resources [ { name: "R1" count: 4 }, { name: "R2" global: True count: 2 } ]
                     priority: 2 } } ]"""
    config = resolve(text, gpus=(0, 1, 2))
    group = config.instance_group[0]
    assert list(group.gpus) == [0, 1, 2] and group.rate_limiter.priority == 2
    assert [getattr(r, "global") for r in group.rate_limiter.resources] == [False, True]
