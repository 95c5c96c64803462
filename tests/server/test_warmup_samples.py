"""Warmup samples built from model_warmup (llmserve/models/warmup.py): data kinds, shapes,
inputs that are not model inputs, batch size 0, and the errors that name the sample."""

import numpy as np
import pytest

from llmserve.config.parse import parse_config_text
from llmserve.core.datatypes import float32_to_bf16_bytes
from llmserve.core.errors import InvalidArgument
from llmserve.models.warmup import build_samples

CONFIG = """
name: "m"
backend: "python"
max_batch_size: 4
input [ { name: "F" data_type: TYPE_FP16 dims: [ 2 ] },
        { name: "B" data_type: TYPE_BOOL dims: [ 2 ] },
        { name: "H" data_type: TYPE_BF16 dims: [ 2 ] reshape: { shape: [ 2, 1 ] } } ]
output [ { name: "O" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def _inp(name, data_type, dims, source):
    return f'inputs {{ key: "{name}" value: {{ data_type: {data_type} dims: [ {dims} ] {source} }} }}'


def _samples(tmp_path, warmup: str):
    config = parse_config_text(CONFIG + f"model_warmup [ {warmup} ]", "config.pbtxt")
    return build_samples(config, tmp_path)


def test_data_kinds_shapes_and_extra_inputs(tmp_path):
    (tmp_path / "warmup").mkdir()
    raw = float32_to_bf16_bytes(np.array([1.5, -2], np.float32)) + b"extra bytes are unused"
    (tmp_path / "warmup" / "h.bin").write_bytes(raw)
    a, b = _samples(tmp_path, f"""
      {{ name: "zero" batch_size: 0 {_inp("F", "TYPE_FP16", "2", "zero_data: true")} }},
      {{ name: "a" batch_size: 3 count: 0
         {_inp("F", "TYPE_FP16", "2", "zero_data: true")}
         {_inp("B", "TYPE_BOOL", "2", "random_data: true")}
         {_inp("H", "TYPE_BF16", "2", 'input_data_file: "h.bin"')}
         {_inp("START", "TYPE_INT32", "1", "zero_data: true")} }},
      {{ name: "b" batch_size: 1 count: 2
         {_inp("F", "TYPE_FP16", "2", "random_data: true")}
         {_inp("B", "TYPE_BOOL", "2", "zero_data: true")}
         {_inp("H", "TYPE_BF16", "2", "zero_data: true")} }}""")
    assert (a.name, b.name) == ("a", "b")  # batch size 0 is skipped
    assert (a.count, a.batch_size, a.request_batch) == (1, 3, 1)  # count 0 runs once
    assert a.inputs["F"].data.dtype == np.float16 and a.inputs["F"].data.shape == (1, 2)
    assert not a.inputs["F"].data.any()
    assert a.inputs["B"].data.dtype == np.bool_
    assert a.inputs["H"].datatype == "BF16" and a.inputs["H"].data.shape == (1, 2, 1)  # reshaped
    np.testing.assert_array_equal(a.inputs["H"].data.reshape(-1), [1.5, -2])
    # not a model input (a sequence control input, say): no batch dimension, passed as is
    assert a.inputs["START"].data.shape == (1,) and a.inputs["START"].datatype == "INT32"
    assert b.count == 2 and b.inputs["F"].data.shape == (1, 2)


@pytest.mark.parametrize("warmup, message", [
    (f'{{ name: "wild" batch_size: 1 {_inp("F", "TYPE_FP16", "-1", "zero_data: true")} }}',
     "failed to run warmup sample 'wild': warmup setting expects all variable-size dimensions "
     "are specified for input 'F'"),
    (f'{{ name: "nodata" batch_size: 1 {_inp("F", "TYPE_FP16", "2", "")} }}',
     "'nodata': warmup setting expects input 'F' to have input_data_type set"),
    (f'{{ name: "type" batch_size: 1 {_inp("F", "TYPE_FP32", "2", "zero_data: true")} '
     f'{_inp("B", "TYPE_BOOL", "2", "zero_data: true")} '
     f'{_inp("H", "TYPE_BF16", "2", "zero_data: true")} }}',
     "'type': inference input 'F' data-type is 'FP32', but model 'm' expects 'FP16'"),
    (f'{{ name: "missing" batch_size: 1 {_inp("F", "TYPE_FP16", "2", "zero_data: true")} }}',
     "'missing': expected 3 inputs but got 1 inputs"),
])
def test_bad_samples_name_the_sample(tmp_path, warmup, message):
    with pytest.raises(InvalidArgument) as info:
        _samples(tmp_path, warmup)
    assert message in info.value.message
