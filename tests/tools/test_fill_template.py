import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fill_template.py"
_spec = importlib.util.spec_from_file_location("fill_template", TOOL)
fill_template = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fill_template)

TEMPLATE = """name: "tensorrt_llm"
backend: "${triton_backend}"
max_batch_size: ${triton_max_batch_size}
dynamic_batching { max_queue_delay_microseconds: ${max_queue_delay_microseconds} }
parameters { key: "gpu_device_ids" value: { string_value: "${gpu_device_ids}" } }
parameters { key: "engine_dir" value: { string_value: "${engine_dir}" } }
parameters { key: "max_queue_size" value: { string_value: "${max_queue_size}" } }
parameters { key: "untouched" value: { string_value: "${tokenizer_dir}" } }
parameters { key: "dollar" value: { string_value: "$decoupled_mode" } }
"""


@pytest.fixture
def template(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text(TEMPLATE)
    return path


def test_in_place_fill(template):
    rc = fill_template.main(["-i", str(template),
                             "triton_backend:tensorrtllm,triton_max_batch_size:64,"
                             r"gpu_device_ids:0\,1,decoupled_mode:True"])
    assert rc == 0
    text = template.read_text()
    assert 'backend: "tensorrtllm"' in text and "max_batch_size: 64" in text
    assert 'string_value: "0,1"' in text
    assert 'string_value: "True"' in text  # $name form too
    # defaults for the queue parameters, unnamed placeholders stay
    assert "max_queue_delay_microseconds: 0 }" in text
    assert 'key: "max_queue_size" value: { string_value: "0" }' in text
    assert '"${tokenizer_dir}"' in text and '"${engine_dir}"' in text


def test_stdout_without_in_place(template, capsys):
    assert fill_template.main([str(template), "triton_max_batch_size:8"]) == 0
    out = capsys.readouterr().out
    assert "max_batch_size: 8" in out
    assert template.read_text() == TEMPLATE


def test_values_with_colons(template):
    rc = fill_template.main(["--in_place", str(template),
                             r"engine_dir:C:\engines\llama,tokenizer_dir:http://host\:8080/t"])
    assert rc == 0
    text = template.read_text()
    assert r'string_value: "C:\engines\llama"' in text
    assert 'string_value: "http://host:8080/t"' in text


def test_unknown_key_is_an_error_and_file_untouched(template, capsys):
    rc = fill_template.main(["-i", str(template), "triton_max_batch_size:8,no_such_key:1"])
    assert rc == 1
    assert template.read_text() == TEMPLATE
    assert f"key 'no_such_key' does not exist in the file {template}." in capsys.readouterr().err


def test_key_must_be_a_placeholder_not_just_text(template):
    # "tensorrt_llm" appears in the file, but not as a placeholder
    assert fill_template.main(["-i", str(template), "tensorrt_llm:x"]) == 1
    assert template.read_text() == TEMPLATE


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("a:1,b:2", {"a": "1", "b": "2"}),
        ("a:1,", {"a": "1"}),
        ("a:", {"a": ""}),
        (r"a:x\,y\,z", {"a": "x,y,z"}),
        ("url:http://h:80/p", {"url": "http://h:80/p"}),
        (r"a\:b:c", {"a:b": "c"}),
        (r"p:C:\dir\\x", {"p": r"C:\dir\x"}),
    ],
)
def test_parse_substitutions(spec, expected):
    assert fill_template.parse_substitutions(spec) == expected


@pytest.mark.parametrize("spec", ["novalue", ":v"])
def test_bad_substitutions(spec):
    with pytest.raises(fill_template.FillError):
        fill_template.parse_substitutions(spec)


def test_missing_file(tmp_path, capsys):
    assert fill_template.main([str(tmp_path / "nope.pbtxt"), "a:1"]) == 1
    assert "nope.pbtxt" in capsys.readouterr().err


def test_command_line_like_tensorrtllm_backend(template):
    result = subprocess.run([sys.executable, str(TOOL), "-i", str(template),
                             "triton_max_batch_size:4"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "max_batch_size: 4" in template.read_text()
    result = subprocess.run([sys.executable, str(TOOL), str(template), "bogus:1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
