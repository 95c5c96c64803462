import json

import pytest
from google.protobuf import json_format

from llmserve.config.errors import ConfigError
from llmserve.config.parse import (
    config_to_json,
    config_to_json_dict,
    config_to_text,
    parse_config_file,
    parse_config_json,
    parse_config_text,
)

FULL = """
name: "full"
backend: "python"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1, 16 ] reshape: { shape: [ 16, -1 ] }
          allow_ragged_batch: true optional: true } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] label_filename: "labels.txt" } ]
version_policy: { specific: { versions: [ 1, 3 ] } }
model_transaction_policy { decoupled: True }
instance_group [ { name: "g" count: 2 kind: KIND_GPU gpus: [ 0, 1 ] host_policy: "policy_0"
                   rate_limiter { resources [ { name: "R1" count: 4 },
                                              { name: "R2" global: True count: 2 } ]
                                  priority: 2 } } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100
                   default_queue_policy { timeout_action: DELAY
                                          default_timeout_microseconds: 5000000000 } }
optimization { priority: PRIORITY_MAX input_pinned_memory { enable: false } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "IN" value: { data_type: TYPE_FP32
                 dims: [ 16, 1 ] zero_data: true } } } ]
response_cache { enable: true }
parameters { key: "tokenizer_dir" value: { string_value: "${tokenizer_dir}" } }
parameters { key: "n" value: { string_value: "123" } }
cc_model_filenames [ { key: "8.0" value: "a100.plan" } ]
"""


def test_every_section_is_kept():
    config = parse_config_text(FULL)
    assert config.input[0].reshape.shape == [16, -1]
    assert config.model_transaction_policy.decoupled
    group = config.instance_group[0]
    assert (group.host_policy, group.rate_limiter.priority) == ("policy_0", 2)
    assert config.dynamic_batching.default_queue_policy.default_timeout_microseconds == 5_000_000_000
    assert config.model_warmup[0].inputs["IN"].zero_data
    assert config.response_cache.enable
    assert config.parameters["tokenizer_dir"].string_value == "${tokenizer_dir}"
    assert config.cc_model_filenames["8.0"] == "a100.plan"
    assert config.version_policy.specific.versions == [1, 3]
    assert parse_config_text(config_to_text(config)) == config


def test_json_like_triton_config_endpoint():
    data = config_to_json_dict(parse_config_text(FULL))
    # proto field names, declaration order, defaults printed
    keys = list(data)
    assert keys[:6] == ["name", "platform", "backend", "runtime", "version_policy",
                        "max_batch_size"]
    assert data["platform"] == "" and data["batch_input"] == []
    assert data["input"][0]["format"] == "FORMAT_NONE"
    assert data["input"][0]["is_shape_tensor"] is False
    # int64 fields are numbers, string fields stay strings
    assert data["input"][0]["dims"] == [-1, 16]
    assert data["input"][0]["reshape"] == {"shape": [16, -1]}
    assert data["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    policy = data["dynamic_batching"]["default_queue_policy"]
    assert policy["default_timeout_microseconds"] == 5_000_000_000
    assert data["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert data["model_warmup"][0]["inputs"]["IN"]["dims"] == [16, 1]
    assert data["parameters"]["n"] == {"string_value": "123"}
    assert data["instance_group"][0]["rate_limiter"]["resources"][1]["global"] is True
    # JSON round trip (a load request's config override is such JSON)
    assert parse_config_json(config_to_json(parse_config_text(FULL))) == parse_config_text(FULL)
    assert json.loads(config_to_json(parse_config_text(FULL))) == data


def test_int64_as_string_option():
    data = config_to_json_dict(parse_config_text(FULL), int64_as_string=True)
    assert data["input"][0]["dims"] == ["-1", "16"] and data["max_batch_size"] == 8


def test_protobuf_json_with_string_int64_also_parses():
    config = parse_config_text(FULL)
    as_protobuf_json = json_format.MessageToJson(config, preserving_proto_field_name=True)
    assert '"-1"' in as_protobuf_json
    assert parse_config_json(as_protobuf_json) == config


def test_parse_error_names_file_line_and_problem(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nbackend: "python"\nmax_batchsize: 4\n')
    with pytest.raises(ConfigError) as e:
        parse_config_file(path)
    assert str(e.value) == (f'{path}:3:1: Message type "inference.ModelConfig" has no field '
                            'named "max_batchsize".')


def test_unfilled_template_placeholder_hint(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('backend: "python"\nmax_batch_size: ${triton_max_batch_size}\n')
    with pytest.raises(ConfigError) as e:
        parse_config_file(path)
    message = str(e.value)
    assert message.startswith(f"{path}:2:")
    assert "unfilled template placeholder '${triton_max_batch_size}'" in message
    assert "tools/fill_template.py" in message


@pytest.mark.parametrize(
    "text, problem",
    [
        ("input [ { name: \"x\" data_type: TYPE_FLOAT } ]", "TYPE_FLOAT"),
        ("max_batch_size: 4 max_batch_size: 5", "max_batch_size"),
        ("input [ { name: \"x\" ", "1:"),
        ("max_batch_size: 99999999999", "Value out of range"),
    ],
)
def test_parse_errors(text, problem):
    with pytest.raises(ConfigError) as e:
        parse_config_text(text, "/r/m/config.pbtxt")
    assert str(e.value).startswith("/r/m/config.pbtxt:1:")
    assert problem in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the model configuration"):
        parse_config_file(tmp_path / "missing.pbtxt")
    binary = tmp_path / "bin.pbtxt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        parse_config_file(binary)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[]", "must be a JSON object"),
        ('{"max_batch_size": 1,', "invalid JSON at line 1"),
        ('{"nope": 1}', "nope"),
        ('{"input": [{"data_type": "TYPE_NOPE"}]}', "TYPE_NOPE"),
    ],
)
def test_json_errors(text, problem):
    with pytest.raises(ConfigError) as e:
        parse_config_json(text, "override")
    assert str(e.value).startswith("override: ") and problem in str(e.value)
