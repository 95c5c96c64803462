from llmserve.config.parse import parse_config_text
from llmserve.config.shapes import find_input, find_output, full_dims, model_dims, shape_matches

TEXT = """
input [ { name: "input0" data_type: TYPE_FP32 dims: [ 16 ] },
        { name: "in" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } } ]
output [ { name: "output0" data_type: TYPE_FP32 dims: [ 4, -1 ] } ]
"""


def test_full_dims_follow_max_batch_size():
    batched = parse_config_text("max_batch_size: 8\n" + TEXT)
    assert full_dims(batched, find_input(batched, "input0")) == [-1, 16]
    assert full_dims(batched, find_output(batched, "output0")) == [-1, 4, -1]
    unbatched = parse_config_text("max_batch_size: 0\n" + TEXT)
    assert full_dims(unbatched, find_input(unbatched, "input0")) == [16]
    assert find_input(unbatched, "nope") is None and find_output(unbatched, "input0") is None


def test_model_dims_apply_reshape():
    config = parse_config_text(TEXT)
    assert model_dims(find_input(config, "in")) == []
    assert model_dims(find_input(config, "input0")) == [16]


def test_shape_matches():
    assert shape_matches([-1, 4], [3, 4])
    assert shape_matches([-1, 4], [0, 4])
    assert not shape_matches([-1, 4], [3, 5])
    assert not shape_matches([4], [4, 1])
