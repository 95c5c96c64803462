import json

import pytest

import triton_python_backend_utils as pb_utils
from llmserve.backends.python.model_config import ModelConfig


def test_pb_utils_exports_it():
    assert pb_utils.ModelConfig is ModelConfig


def test_as_dict_and_setters():
    cfg = ModelConfig(json.dumps({"name": "m", "max_batch_size": 0, "input": [], "output": []}))
    cfg.set_max_batch_size(8)
    cfg.set_max_batch_size(8)  # same value again is fine
    cfg.add_input({"name": "A", "data_type": "TYPE_INT64", "dims": (2, -1)})
    cfg.add_input({"name": "A", "data_type": "TYPE_INT64", "dims": [2, -1], "optional": True})
    cfg.add_output({"name": "B", "data_type": "TYPE_BOOL", "dims": [1]})
    cfg.set_dynamic_batching()
    cfg.set_dynamic_batching()
    cfg.set_model_transaction_policy({"decoupled": True})
    cfg.set_model_transaction_policy({"decoupled": True})
    data = cfg.as_dict()
    assert data["max_batch_size"] == 8 and data["dynamic_batching"] == {}
    assert data["input"] == [{"name": "A", "data_type": "TYPE_INT64", "dims": [2, -1],
                              "optional": True}]
    assert data["output"] == [{"name": "B", "data_type": "TYPE_BOOL", "dims": [1]}]
    assert data["model_transaction_policy"] == {"decoupled": True}


def test_fills_declared_tensor_missing_type_or_dims():
    cfg = ModelConfig({"name": "m", "input": [{"name": "A", "data_type": "TYPE_INVALID",
                                               "dims": []}]})
    cfg.add_input({"name": "A", "data_type": "TYPE_FP16", "dims": [3]})
    assert cfg.as_dict()["input"] == [{"name": "A", "data_type": "TYPE_FP16", "dims": [3]}]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.set_max_batch_size(-1), "must be non-negative"),
        (lambda c: c.set_max_batch_size("4"), "must be an int"),
        (lambda c: c.set_max_batch_size(2), "configuration specified max_batch_size 4"),
        (lambda c: c.add_input(["A"]), "must be a dict"),
        (lambda c: c.add_input({"data_type": "TYPE_FP32", "dims": [1]}), "must contain "
         "property name"),
        (lambda c: c.add_input({"name": "A", "data_type": "TYPE_FP32"}), "missing 'dims'"),
        (lambda c: c.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": ["x"]}),
         "invalid dims"),
        (lambda c: c.add_output({"name": "O", "data_type": "TYPE_FP32", "dims": [2]}),
         "expects dims [2] but the model configuration specifies dims [1]"),
        (lambda c: c.add_output({"name": "O", "data_type": "TYPE_FP64", "dims": [1]}),
         "configuration expects datatype TYPE_FP32 for output 'O'"),
        (lambda c: c.set_model_transaction_policy({"decoupled": True}),
         "which is already set to 'False'"),
        (lambda c: c.set_model_transaction_policy(True), "must be a dict"),
    ],
)
def test_conflicts_and_bad_arguments_raise(call, message):
    cfg = ModelConfig({"name": "m", "max_batch_size": 4,
                       "output": [{"name": "O", "data_type": "TYPE_FP32", "dims": [1]}],
                       "model_transaction_policy": {"decoupled": False}})
    with pytest.raises(ValueError) as e:
        call(cfg)
    assert message in str(e.value)


def test_dynamic_batching_refused_with_other_scheduler():
    cfg = ModelConfig({"name": "m", "ensemble_scheduling": {"step": []}})
    with pytest.raises(ValueError, match="'ensemble_scheduling'"):
        cfg.set_dynamic_batching()
