"""ONNX auto-complete through load_model_config: batching models get default-max-batch-size
and dynamic batching, inputs/outputs come from the model, partial configs are filled."""

import pytest
from onnx_fixtures import add_sub, scale_batch_only, string_identity, write_onnx
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config.autocomplete_onnx import default_max_batch_size
from llmserve.options import ServerOptions
from llmserve.repository import ConfigError, config_to_json_dict, load_model_config


def _io(tensors):
    return [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def test_no_config_batching_model(tmp_path):
    model_dir = write_onnx(tmp_path, "add_sub", add_sub())
    config = load_model_config(model_dir, ServerOptions())
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert _io(config.input) == [("INPUT0", "TYPE_FP32", [4]), ("INPUT1", "TYPE_FP32", [4])]
    assert _io(config.output) == [("OUTPUT0", "TYPE_FP32", [4]), ("OUTPUT1", "TYPE_FP32", [4])]
    group = config.instance_group[0]
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 2


@pytest.mark.parametrize("backend_config, expected", [
    ({"": {"default-max-batch-size": "8"}}, 8),
    ({"onnxruntime": {"default-max-batch-size": "16"}, "": {"default-max-batch-size": "8"}}, 16),
    ({"": {"default-max-batch-size": "1"}}, 1),
    ({"": {"default-max-batch-size": "0"}}, 0),
])
def test_default_max_batch_size_option(tmp_path, backend_config, expected):
    model_dir = write_onnx(tmp_path, "m", add_sub())
    config = load_model_config(model_dir, ServerOptions(backend_config=backend_config))
    assert config.max_batch_size == expected
    # dynamic batching only when the batch size is > 1 (Triton's rule)
    assert config.HasField("dynamic_batching") == (expected > 1)
    dims = [4] if expected > 0 else [-1, 4]
    assert [list(t.dims) for t in config.input] == [dims, dims]


def test_bad_default_max_batch_size():
    with pytest.raises(ConfigError, match="must be an integer"):
        default_max_batch_size(ServerOptions(backend_config={"": {"default-max-batch-size": "x"}}))


def test_fixed_batch_dimension_does_not_batch(tmp_path):
    model_dir = write_onnx(tmp_path, "m", add_sub(batch=1))
    config = load_model_config(model_dir, ServerOptions())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert _io(config.input)[0] == ("INPUT0", "TYPE_FP32", [1, 4])


def test_partial_config_fills_outputs_only(tmp_path):
    model_dir = write_onnx(tmp_path, "m", add_sub(), config="""
max_batch_size: 2
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
""")
    config = load_model_config(model_dir, ServerOptions())
    assert config.max_batch_size == 2
    assert config.HasField("dynamic_batching")
    assert _io(config.output) == [("OUTPUT0", "TYPE_FP32", [4]), ("OUTPUT1", "TYPE_FP32", [4])]
    assert len(config.input) == 2


def test_config_batch_on_non_batching_model_fails(tmp_path):
    model_dir = write_onnx(tmp_path, "m", add_sub(batch=None), config="max_batch_size: 8\n")
    with pytest.raises(ConfigError, match="configuration specified max-batch 8 but model "
                                          "session does not support batching"):
        load_model_config(model_dir, ServerOptions())


def test_full_config_is_not_read_from_the_model(tmp_path):
    # inputs and outputs given: Triton skips auto-complete, so the file is not even parsed
    model_dir = write_onnx(tmp_path, "m", b"not an onnx model", config="""
platform: "onnxruntime_onnx"
input [ { name: "A" data_type: TYPE_INT32 dims: [ 3 ] } ]
output [ { name: "B" data_type: TYPE_INT32 dims: [ 3 ] } ]
""")
    config = load_model_config(model_dir, ServerOptions())
    assert config.max_batch_size == 0 and _io(config.input) == [("A", "TYPE_INT32", [3])]


def test_batch_only_tensor_gets_reshape(tmp_path):
    model_dir = write_onnx(tmp_path, "m", scale_batch_only())
    config = load_model_config(model_dir, ServerOptions())
    assert config.max_batch_size == 4
    assert list(config.input[0].dims) == [1] and config.input[0].HasField("reshape")
    assert list(config.input[0].reshape.shape) == []
    assert config_to_json_dict(config)["input"][0]["reshape"] == {"shape": []}


def test_string_tensors_and_model_folder(tmp_path):
    model_dir = write_onnx(tmp_path, "m", string_identity(), folder=True)
    config = load_model_config(model_dir, ServerOptions())
    assert _io(config.input) == [("TEXT", "TYPE_STRING", [1])]
    assert _io(config.output) == [("ECHO", "TYPE_STRING", [1])]


def test_corrupt_model_without_config(tmp_path):
    model_dir = write_onnx(tmp_path, "m", b"garbage")
    with pytest.raises(ConfigError, match="ONNX Runtime cannot load the model") as info:
        load_model_config(model_dir, ServerOptions())
    assert str(model_dir / "1" / "model.onnx") in str(info.value)


def test_disable_auto_complete(tmp_path):
    model_dir = write_onnx(tmp_path, "m", add_sub(), config="""
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
""")
    config = load_model_config(model_dir, ServerOptions(disable_auto_complete_config=True))
    assert config.max_batch_size == 0 and len(config.output) == 0


def test_highest_version_is_read(tmp_path):
    write_onnx(tmp_path, "m", add_sub(dims=(4,)), version=1)
    model_dir = write_onnx(tmp_path, "m", add_sub(dims=(6,)), version=2)
    config = load_model_config(model_dir, ServerOptions())
    assert list(config.input[0].dims) == [6]


def test_without_onnxruntime_the_config_is_left_alone(tmp_path, monkeypatch, caplog):
    from llmserve.config import autocomplete_onnx

    monkeypatch.setattr(autocomplete_onnx, "onnxruntime_installed", lambda: False)
    model_dir = write_onnx(tmp_path, "m", add_sub())
    config = load_model_config(model_dir, ServerOptions())
    assert config.max_batch_size == 0 and len(config.input) == 0
    assert "onnxruntime is not installed" in caplog.text
