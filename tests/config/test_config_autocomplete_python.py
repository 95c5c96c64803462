import pytest
from repo_builder import write_model

from llmserve.config.autocomplete_python import defines_auto_complete, run_python_auto_complete
from llmserve.config.errors import ConfigError
from llmserve.config.parse import parse_config_text
from llmserve.options import ServerOptions
from llmserve.repository import load_model_config

HEAD = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        cfg = auto_complete_model_config
"""


def model_with(body: str) -> str:
    lines = "".join(f"        {line}\n" for line in body.strip().splitlines())
    return HEAD + lines + "        return cfg\n"


def load(tmp_path, body, config=None, **options):
    model_dir = write_model(tmp_path, "m", config=config,
                            versions={1: {"model.py": model_with(body)}})
    return load_model_config(model_dir, ServerOptions(**options))


def test_auto_complete_fills_the_minimal_config(tmp_path):
    config = load(tmp_path, """
cfg.set_max_batch_size(4)
cfg.add_input({"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4], "optional": True})
cfg.add_output({"name": "OUTPUT0", "data_type": "TYPE_STRING", "dims": [-1]})
cfg.set_dynamic_batching()
cfg.set_model_transaction_policy({"decoupled": True})
assert cfg.as_dict()["name"] == "m"
""")
    assert config.max_batch_size == 4 and config.model_transaction_policy.decoupled
    assert config.input[0].optional and list(config.output[0].dims) == [-1]
    assert list(config.dynamic_batching.preferred_batch_size) == [4]


def test_auto_complete_agrees_with_config_file(tmp_path):
    text = """backend: "python"
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
sequence_batching { }
"""
    config = load(tmp_path, """
cfg.set_max_batch_size(4)
cfg.add_input({"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]})
cfg.add_output({"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]})
""", config=text)
    assert [i.name for i in config.input] == ["INPUT0"]
    assert [o.name for o in config.output] == ["OUTPUT0"]
    assert config.HasField("sequence_batching")


@pytest.mark.parametrize(
    "body, expected",
    [
        ("cfg.set_max_batch_size(8)", "configuration specified max_batch_size 4, but in "
         "auto-complete-config function for model 'm' specified max_batch_size 8"),
        ('cfg.add_input({"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [4]})',
         "configuration expects datatype TYPE_FP32 for input 'INPUT0', model provides "
         "TYPE_INT32"),
        ('cfg.add_input({"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [5]})',
         "the model expects dims [5] but the model configuration specifies dims [4]"),
        ('cfg.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [1], "reshape": {}})',
         "contains property other than 'name', 'data_type', 'dims', 'optional'"),
        ('cfg.add_output({"name": "X", "data_type": "TYPE_FP32", "dims": [1], "optional": 1})',
         "contains property other than 'name', 'data_type', 'dims'"),
        ('cfg.add_output({"name": "X", "dims": [1]})', "is missing 'data_type' property"),
        ('cfg.add_input({"name": "X", "data_type": "TYPE_FP33", "dims": [1]})',
         "invalid data_type 'TYPE_FP33'"),
        ("cfg.set_dynamic_batching()", "Configuration specified scheduling_choice as "
         "'sequence_batching'"),
        ('cfg.set_model_transaction_policy({"decoupled": True, "x": 1})',
         "contains property other than 'decoupled'"),
        ("raise RuntimeError('boom')", "RuntimeError: boom"),
    ],
)
def test_conflicts_raise_with_model_file_and_line(tmp_path, body, expected):
    text = """backend: "python"
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
sequence_batching { }
"""
    with pytest.raises(ConfigError) as e:
        load(tmp_path, body, config=text)
    message = str(e.value)
    assert expected in message
    assert message.startswith(f"{tmp_path / 'm' / '1' / 'model.py'}:")
    assert "auto_complete_config of model 'm' failed" in message


def test_decoupled_cannot_be_flipped(tmp_path):
    text = 'backend: "python"\nmodel_transaction_policy { decoupled: false }\n'
    with pytest.raises(ConfigError, match="trying to change decoupled property"):
        load(tmp_path, 'cfg.set_model_transaction_policy({"decoupled": True})', config=text)


def test_model_without_auto_complete_is_not_imported(tmp_path):
    source = "raise SystemExit('imported!')\n\nclass TritonPythonModel:\n    pass\n"
    model_dir = write_model(tmp_path, "m", config=None, versions={1: {"model.py": source}})
    assert not defines_auto_complete(model_dir / "1" / "model.py")
    config = load_model_config(model_dir, ServerOptions())
    assert config.backend == "python"


def test_syntax_error_names_line(tmp_path):
    model_dir = write_model(tmp_path, "m", config=None,
                            versions={1: {"model.py": "class TritonPythonModel:\n  def (:\n"}})
    with pytest.raises(ConfigError) as e:
        load_model_config(model_dir, ServerOptions())
    assert str(e.value).startswith(f"{model_dir / '1' / 'model.py'}:2: syntax error")


def test_helpers_in_version_folder_and_highest_version(tmp_path):
    helper = "SIZE = {size}\n"
    body = model_with("""
import helper_mod
cfg.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [helper_mod.SIZE]})
""")
    model_dir = write_model(tmp_path, "m", config=None, versions={
        1: {"model.py": body, "helper_mod.py": helper.format(size=1)},
        2: {"model.py": body, "helper_mod.py": helper.format(size=2)},
    })
    assert list(load_model_config(model_dir, ServerOptions()).input[0].dims) == [2]
    (model_dir / "config.pbtxt").write_text('backend: "python"\n'
                                            "version_policy { specific { versions: [1] } }")
    # a second load imports afresh: the helper of version 1 now, not the cached one
    assert list(load_model_config(model_dir, ServerOptions()).input[0].dims) == [1]


def test_default_model_filename_is_used(tmp_path):
    model_dir = write_model(tmp_path, "m", config='backend: "python"\n'
                            'default_model_filename: "main.py"',
                            versions={1: {"main.py": model_with("cfg.set_max_batch_size(2)")}})
    assert load_model_config(model_dir, ServerOptions()).max_batch_size == 2


def test_returning_something_else_is_an_error(tmp_path):
    source = HEAD + "        return {'max_batch_size': 2}\n"
    model_file = write_model(tmp_path, "m", config=None,
                             versions={1: {"model.py": source}}) / "1" / "model.py"
    with pytest.raises(ConfigError, match="must return the pb_utils.ModelConfig"):
        run_python_auto_complete(parse_config_text('name: "m"'), model_file)
