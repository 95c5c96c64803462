import json
import logging

import pytest
from repo_builder import PY_MODEL, write_model

from llmserve.options import ServerOptions
from llmserve.repository import (
    ConfigError,
    backend_of,
    config_to_json_dict,
    load_model_config,
    scan_repositories,
)


def _cfg(batch: int) -> str:
    return f"""
backend: "python"
max_batch_size: {batch}
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
"""


# The seed's custom-config layout: each file's max_batch_size says which one was picked.
SEED_LAYOUT = {
    "model_a": {"configs/v100.pbtxt": 1, "configs/h100.pbtxt": 2, "config.pbtxt": 3},
    "model_b": {"configs/v100.pbtxt": 4, "config.pbtxt": 5},
    "model_c": {"configs/config.pbtxt": 6, "config.pbtxt": 7},
}


@pytest.fixture
def seed_repo(tmp_path):
    for model, files in SEED_LAYOUT.items():
        write_model(tmp_path, model, config=None,
                    extra={rel: _cfg(batch) for rel, batch in files.items()})
    return tmp_path


@pytest.mark.parametrize(
    "config_name, expected",
    [
        # Example 1: --model-config-name=h100
        ("h100", {"model_a": "configs/h100.pbtxt", "model_b": "config.pbtxt",
                  "model_c": "config.pbtxt"}),
        # Example 2: --model-config-name=config
        ("config", {"model_a": "config.pbtxt", "model_b": "config.pbtxt",
                    "model_c": "configs/config.pbtxt"}),
        # Example 3: no --model-config-name
        (None, {"model_a": "config.pbtxt", "model_b": "config.pbtxt",
                "model_c": "config.pbtxt"}),
    ],
)
def test_seed_custom_config_examples(seed_repo, config_name, expected):
    options = ServerOptions(model_repositories=[seed_repo], model_config_name=config_name)
    for name, model_dir in scan_repositories([seed_repo]).items():
        config = load_model_config(model_dir, options)
        assert config.max_batch_size == SEED_LAYOUT[name][expected[name]], name


def test_auto_complete_when_no_config_file(tmp_path):
    model_dir = write_model(tmp_path, "auto", config=None,
                            extra={"configs/v100.pbtxt": _cfg(1)})
    config = load_model_config(model_dir, ServerOptions(model_config_name="h100"))
    assert config.name == "auto" and config.backend == "python"
    assert config.default_model_filename == "model.py"
    assert len(config.input) == 0 and config.max_batch_size == 0


def test_python_auto_complete_full_config(tmp_path):
    model = PY_MODEL + """
    @staticmethod
    def auto_complete_config(cfg):
        cfg.set_max_batch_size(8)
        cfg.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [4]})
        cfg.add_output({"name": "OUT", "data_type": "TYPE_FP32", "dims": [4]})
        return cfg
"""
    model_dir = write_model(tmp_path, "auto", config=None, versions={1: {"model.py": model}})
    data = config_to_json_dict(load_model_config(model_dir, ServerOptions()))
    assert data["max_batch_size"] == 8
    assert data["input"][0]["dims"] == [4] and data["output"][0]["name"] == "OUT"
    # max_batch_size > 1 and no scheduler in an auto-completed config: dynamic batching.
    assert data["dynamic_batching"]["preferred_batch_size"] == [8]
    assert data["instance_group"] == [{
        "name": "auto", "kind": "KIND_CPU", "count": 1, "gpus": [], "secondary_devices": [],
        "profile": [], "passive": False, "host_policy": "",
    }]
    assert data["version_policy"] == {"latest": {"num_versions": 1}}


def test_disable_auto_complete_still_fills_instance_group(tmp_path):
    model = PY_MODEL + """
    @staticmethod
    def auto_complete_config(cfg):
        raise RuntimeError("must not be called")
"""
    model_dir = write_model(tmp_path, "m", config='backend: "python"',
                            versions={1: {"model.py": model}})
    options = ServerOptions(disable_auto_complete_config=True)
    config = load_model_config(model_dir, options)
    assert len(config.instance_group) == 1 and config.instance_group[0].count == 1
    assert not config.HasField("dynamic_batching")
    with pytest.raises(ConfigError, match="must not be called"):
        load_model_config(model_dir, ServerOptions())


def test_python_config_file_keeps_its_scheduler_choice(tmp_path):
    model_dir = write_model(tmp_path, "m", config=_cfg(8))
    config = load_model_config(model_dir, ServerOptions())
    assert not config.HasField("dynamic_batching")


def test_onnx_batching_model_gets_dynamic_batching(tmp_path):
    config = _cfg(8).replace('backend: "python"', 'platform: "onnxruntime_onnx"')
    model_dir = write_model(tmp_path, "m", config=config, versions={1: {"model.onnx": "x"}})
    loaded = load_model_config(model_dir, ServerOptions())
    assert loaded.HasField("dynamic_batching") and loaded.backend == "onnxruntime"
    assert loaded.instance_group[0].count == 2  # KIND_CPU default for onnxruntime
    disabled = load_model_config(model_dir, ServerOptions(disable_auto_complete_config=True))
    assert not disabled.HasField("dynamic_batching")


def test_custom_backend_folder_naming(tmp_path):
    model_dir = write_model(tmp_path, "mymodel.identity", config=None, versions={1: {}})
    config = load_model_config(model_dir, ServerOptions())
    assert config.backend == "identity" and backend_of(config) == "identity"
    assert config.default_model_filename == "model.identity"
    bare = write_model(tmp_path, "bare", config=None, versions={1: {}})
    with pytest.raises(ConfigError) as e:
        load_model_config(bare, ServerOptions())
    assert "Could not determine backend for model 'bare'" in str(e.value)
    assert "model.<backend_name>" in str(e.value)


def test_name_must_equal_folder(tmp_path):
    model_dir = write_model(tmp_path, "folder", config='name: "other"\nbackend: "python"')
    with pytest.raises(ConfigError) as e:
        load_model_config(model_dir, ServerOptions())
    assert str(model_dir / "config.pbtxt") in str(e.value)
    assert "unexpected directory name 'folder' for model 'other'" in str(e.value)


def test_errors_name_file_and_line(tmp_path):
    config = """backend: "python"
max_batch_size: 2
input [
  { name: "GOOD" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "BAD" data_type: TYPE_FP32 dims: [ 0 ] }
]
"""
    model_dir = write_model(tmp_path, "m", config=config)
    with pytest.raises(ConfigError) as e:
        load_model_config(model_dir, ServerOptions())
    message = str(e.value)
    assert message.startswith(f"{model_dir / 'config.pbtxt'}:5: ")
    assert "'BAD' dimension must be integer >= 1, or -1" in message
    broken = write_model(tmp_path, "broken", config='backend: "python"\nmax_batch_size: x\n')
    with pytest.raises(ConfigError) as e:
        load_model_config(broken, ServerOptions())
    assert str(e.value).startswith(f"{broken / 'config.pbtxt'}:2:")


def test_override_json(tmp_path):
    model_dir = write_model(tmp_path, "m", config=_cfg(2))
    override = json.dumps({"backend": "python", "max_batch_size": 16,
                           "input": [{"name": "X", "data_type": "TYPE_INT32", "dims": [-1]}],
                           "output": [{"name": "Y", "data_type": "TYPE_INT32", "dims": ["3"]}]})
    config = load_model_config(model_dir, ServerOptions(), override_json=override)
    assert config.max_batch_size == 16 and config.input[0].name == "X"
    with pytest.raises(ConfigError, match="config override for model 'm'"):
        load_model_config(model_dir, ServerOptions(), override_json='{"max_batch_size": "x"}')
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_model_config(model_dir, ServerOptions(), override_json="{")


def test_identical_duplicate_output_accepted_with_warning(tmp_path, caplog):
    config = _cfg(2) + 'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    model_dir = write_model(tmp_path, "m", config=config)
    with caplog.at_level(logging.WARNING):
        loaded = load_model_config(model_dir, ServerOptions())
    assert [o.name for o in loaded.output] == ["OUT"]
    assert "declared twice identically" in caplog.text
    conflicting = _cfg(2) + 'output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 4 ] } ]\n'
    bad_dir = write_model(tmp_path, "bad", config=conflicting)
    with pytest.raises(ConfigError, match="'OUT' is declared twice with different settings"):
        load_model_config(bad_dir, ServerOptions())


def test_label_file_checked(tmp_path):
    config = _cfg(0) + \
        'output [ { name: "CLS" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "l.txt" } ]'
    model_dir = write_model(tmp_path, "m", config=config)
    with pytest.raises(ConfigError, match="label file of output 'CLS' does not exist"):
        load_model_config(model_dir, ServerOptions())
    (model_dir / "l.txt").write_text("a\nb\nc\n")
    assert load_model_config(model_dir, ServerOptions()).output[1].label_filename == "l.txt"
