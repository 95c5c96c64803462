import logging

import pytest

from llmserve.config.complete import (
    apply_default_max_batch_size,
    drop_duplicate_outputs,
    enable_default_dynamic_batching,
    host_policy_name,
    normalize_config,
    normalize_instance_groups,
)
from llmserve.config.errors import ConfigError
from llmserve.config.parse import parse_config_text

IO = ('input [ { name: "I" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
      'output [ { name: "O" data_type: TYPE_FP32 dims: [ 4 ] } ]\n')


def groups(text: str, gpus=(), name="m"):
    config = parse_config_text(f'name: "{name}"\n' + text)
    normalize_instance_groups(config, list(gpus))
    return [(g.name, g.kind, g.count, list(g.gpus)) for g in config.instance_group]


CPU, GPU, MODEL = 2, 1, 3


@pytest.mark.parametrize(
    "text, gpus, expected",
    [
        ('backend: "python"', (), [("m", CPU, 1, [])]),
        ('backend: "python"', (0, 1), [("m", GPU, 1, [0, 1])]),
        ('backend: "onnxruntime"', (), [("m", CPU, 2, [])]),
        ('backend: "tensorflow"', (), [("m", CPU, 2, [])]),
        ('backend: "pytorch"', (), [("m", CPU, 1, [])]),
        ('backend: "openvino"', (0,), [("m", CPU, 1, [])]),
        ('backend: "onnxruntime" instance_group [ { kind: KIND_CPU count: 0 } ]', (),
         [("m_0", CPU, 2, [])]),
        ('backend: "python" instance_group [ { count: 3 }, { name: "g" kind: KIND_GPU } ]',
         (0,), [("m_0", GPU, 3, [0]), ("g", GPU, 1, [0])]),
        ('backend: "python" instance_group [ { gpus: [ 4 ] } ]', (0,), [("m_0", CPU, 1, [4])]),
        ('backend: "python" instance_group [ { kind: KIND_MODEL count: 2 } ]', (0,),
         [("m_0", MODEL, 2, [])]),
    ],
)
def test_instance_groups(text, gpus, expected):
    assert groups(text, gpus) == expected


def test_ensemble_gets_no_instance_group():
    assert groups('platform: "ensemble"', (0,)) == []


def test_default_host_policy_names_by_kind():
    """Names only; pinning by policy: tests/e2e/test_e2e_rate_limit_host_policy.py."""
    config = parse_config_text('instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU }, '
                               '{ kind: KIND_MODEL }, { kind: KIND_CPU host_policy: "p0" } ]')
    cpu, gpu, model, named = config.instance_group
    assert host_policy_name(cpu) == "cpu"
    assert host_policy_name(gpu, 3) == "gpu_3"
    assert host_policy_name(model) == "model"
    assert host_policy_name(named, 1) == "p0"


def test_normalize_defaults():
    config = parse_config_text('backend: "python" max_batch_size: 8 dynamic_batching {}')
    normalize_config(config)
    assert config.version_policy.latest.num_versions == 1
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    config = parse_config_text("max_batch_size: 8 sequence_batching { oldest {} }")
    normalize_config(config)
    assert config.sequence_batching.max_sequence_idle_microseconds == 1_000_000
    assert list(config.sequence_batching.oldest.preferred_batch_size) == [8]
    assert config.optimization.input_pinned_memory.enable
    assert config.optimization.output_pinned_memory.enable
    kept = parse_config_text('version_policy { all {} } optimization { input_pinned_memory '
                             '{ enable: false } }')
    normalize_config(kept)
    assert kept.version_policy.HasField("all")
    assert not kept.optimization.input_pinned_memory.enable
    ensemble = parse_config_text('platform: "ensemble"')
    normalize_config(ensemble)
    assert not ensemble.HasField("optimization")


def test_duplicate_outputs(caplog):
    text = IO + 'output [ { name: "O" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    config = parse_config_text('name: "m"\n' + text)
    with caplog.at_level(logging.WARNING):
        drop_duplicate_outputs(config, "cfg.pbtxt")
    assert [o.name for o in config.output] == ["O"]
    assert "cfg.pbtxt: output 'O' of model 'm' is declared twice identically" in caplog.text
    bad = parse_config_text(IO + 'output [ { name: "O" data_type: TYPE_FP32 dims: [ 5 ] } ]')
    with pytest.raises(ConfigError, match="declared twice with different settings"):
        drop_duplicate_outputs(bad)


@pytest.mark.parametrize(
    "text, enabled",
    [
        ("max_batch_size: 8", True),
        ("max_batch_size: 1", False),
        ("max_batch_size: 0", False),
        ("max_batch_size: 8 sequence_batching {}", False),
        ("max_batch_size: 8 dynamic_batching { max_queue_delay_microseconds: 5 }", False),
    ],
)
def test_default_dynamic_batching(text, enabled):
    config = parse_config_text(text)
    assert enable_default_dynamic_batching(config) is enabled
    assert config.HasField("dynamic_batching") == ("dynamic_batching" in text or enabled)


def test_default_max_batch_size():
    # what ONNX auto-complete applies to a model whose tensors batch (test_autocomplete_onnx
    # drives it through load_model_config and --backend-config)
    config = parse_config_text("")
    apply_default_max_batch_size(config, 4, supports_batching=True)
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    fixed = parse_config_text("max_batch_size: 2")
    apply_default_max_batch_size(fixed, 16, supports_batching=True)
    assert fixed.max_batch_size == 2
    unbatched = parse_config_text("")
    apply_default_max_batch_size(unbatched, 4, supports_batching=False)
    assert unbatched.max_batch_size == 0 and not unbatched.HasField("dynamic_batching")
