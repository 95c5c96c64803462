import pytest
from repo_builder import write_model

from llmserve.config.parse import parse_config_text
from llmserve.config.platforms import complete_backend_fields
from llmserve.repository import ConfigError, label_file_path, model_file_path
from llmserve.repository.versions import version_dir_names


def _completed(model_dir, text=""):
    config = parse_config_text(text)
    complete_backend_fields(config, model_dir.name, model_dir, version_dir_names(model_dir))
    return config


@pytest.mark.parametrize(
    "files, backend, platform, expected",
    [
        ({"model.plan": "x"}, "tensorrt", "tensorrt_plan", "model.plan"),
        ({"model.onnx": "x"}, "onnxruntime", "onnxruntime_onnx", "model.onnx"),
        ({"model.onnx/model.onnx": "x", "model.onnx/w.bin": "x"}, "onnxruntime",
         "onnxruntime_onnx", "model.onnx/model.onnx"),
        ({"model.pt": "x"}, "pytorch", "pytorch_libtorch", "model.pt"),
        ({"model.graphdef": "x"}, "tensorflow", "tensorflow_graphdef", "model.graphdef"),
        ({"model.savedmodel/saved_model.pb": "x"}, "tensorflow", "tensorflow_savedmodel",
         "model.savedmodel"),
        ({"model.py": "x"}, "python", "", "model.py"),
    ],
)
def test_default_model_file_per_platform(tmp_path, files, backend, platform, expected):
    model_dir = write_model(tmp_path, "m", config=None, versions={1: files})
    config = _completed(model_dir)
    assert (config.backend, config.platform) == (backend, platform)
    assert model_file_path(model_dir, 1, config) == model_dir / "1" / expected


def test_named_backends_default_files(tmp_path):
    ov = write_model(tmp_path, "ov", None, {1: {"model.xml": "x", "model.bin": "x"}})
    assert model_file_path(ov, 1, _completed(ov, 'backend: "openvino"')) == ov / "1/model.xml"
    dali = write_model(tmp_path, "dali", None, {1: {"model.dali": "x"}})
    assert model_file_path(dali, 1, _completed(dali, 'backend: "dali"')) == dali / "1/model.dali"


def test_openvino_needs_bin(tmp_path):
    ov = write_model(tmp_path, "ov", None, {1: {"model.xml": "x"}})
    with pytest.raises(ConfigError, match="model.bin: the OpenVINO weights"):
        model_file_path(ov, 1, _completed(ov, 'backend: "openvino"'))


def test_default_model_filename_override(tmp_path):
    model_dir = write_model(tmp_path, "m", None, {1: {"resnet.onnx": "x"}})
    config = _completed(model_dir, 'platform: "onnxruntime_onnx" '
                                   'default_model_filename: "resnet.onnx"')
    assert model_file_path(model_dir, 1, config) == model_dir / "1/resnet.onnx"
    py = write_model(tmp_path, "p", None, {1: {"main.py": "x"}})
    config = _completed(py, 'backend: "python" default_model_filename: "main.py"')
    assert model_file_path(py, 1, config) == py / "1/main.py"


def test_missing_model_file_is_named(tmp_path):
    model_dir = write_model(tmp_path, "m", None, {1: {"model.py": "x"}, 2: {}})
    config = _completed(model_dir, 'backend: "python"')
    with pytest.raises(ConfigError) as e:
        model_file_path(model_dir, 2, config)
    assert str(model_dir / "2/model.py") in str(e.value)
    assert "version 2 of model 'm'" in str(e.value)
    with pytest.raises(ConfigError, match="has no version folder"):
        model_file_path(model_dir, 3, config)


def test_backends_without_model_file_get_version_folder(tmp_path):
    trt = write_model(tmp_path, "tensorrt_llm", None, {1: {".gitkeep": ""}})
    assert model_file_path(trt, 1, _completed(trt, 'backend: "tensorrtllm"')) == trt / "1"
    ens = write_model(tmp_path, "ensemble", None, {1: {}})
    assert model_file_path(ens, 1, _completed(ens, 'platform: "ensemble"')) == ens / "1"


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x"])
def test_model_filename_escaping_refused(tmp_path, name):
    model_dir = write_model(tmp_path, "m", None, {1: {"model.py": "x"}})
    config = _completed(model_dir, f'backend: "python" default_model_filename: "{name}"')
    with pytest.raises(ConfigError, match="plain relative path"):
        model_file_path(model_dir, 1, config)


def test_model_file_symlink_escaping_refused(tmp_path):
    secret = tmp_path / "secret.py"
    secret.write_text("x")
    model_dir = write_model(tmp_path / "repo", "m", None, {1: {}})
    (model_dir / "1" / "model.py").symlink_to(secret)
    config = _completed(model_dir, 'backend: "python"')
    with pytest.raises(ConfigError, match="leads outside the model repository"):
        model_file_path(model_dir, 1, config)


CC_CONFIG = """
platform: "tensorrt_plan"
cc_model_filenames [ { key: "7.5" value: "resnet50_T4.plan" },
                     { key: "8.0" value: "resnet50_A100.plan" } ]
"""


def test_cc_model_filenames_by_compute_capability(tmp_path, fake_gpus):
    files = {"model.plan": "x", "resnet50_T4.plan": "x", "resnet50_A100.plan": "x"}
    model_dir = write_model(tmp_path, "m", None, {1: files})
    config = _completed(model_dir, CC_CONFIG)
    assert model_file_path(model_dir, 1, config) == model_dir / "1/model.plan"  # no GPU
    fake_gpus({0: "8.0", 1: "7.5", 2: "9.0"})
    assert model_file_path(model_dir, 1, config) == model_dir / "1/resnet50_A100.plan"
    assert model_file_path(model_dir, 1, config, device_id=1) == model_dir / "1/resnet50_T4.plan"
    assert model_file_path(model_dir, 1, config, device_id=2) == model_dir / "1/model.plan"


def test_label_files(tmp_path):
    model_dir = write_model(tmp_path, "m", extra={"labels.txt": "cat\ndog\n"})
    config = parse_config_text('output [ { name: "o" label_filename: "labels.txt" } ]')
    assert label_file_path(model_dir, config.output[0]) == model_dir / "labels.txt"
    config = parse_config_text('output [ { name: "o" label_filename: "missing.txt" } ]')
    with pytest.raises(ConfigError, match="label file of output 'o' does not exist"):
        label_file_path(model_dir, config.output[0])
    config = parse_config_text('output [ { name: "o" label_filename: "../x.txt" } ]')
    with pytest.raises(ConfigError):
        label_file_path(model_dir, config.output[0])
