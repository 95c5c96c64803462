"""pb_utils pieces that need no server: tensors, DLPack, dtype helpers, errors, requests."""

import logging

import numpy as np
import pytest
import torch

import triton_python_backend_utils as pb_utils


def test_tensor_numpy_and_dlpack_roundtrip():
    t = pb_utils.Tensor("x", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert t.name() == "x" and t.shape() == [2, 3] and t.is_cpu()
    assert t.triton_dtype() == 11
    back = pb_utils.Tensor.from_dlpack("y", t.to_dlpack())
    np.testing.assert_array_equal(back.as_numpy(), t.as_numpy())
    bf = pb_utils.Tensor.from_dlpack("b", torch.utils.dlpack.to_dlpack(torch.ones(2, dtype=torch.bfloat16)))
    with pytest.raises(pb_utils.TritonModelException):
        bf.as_numpy()
    assert torch.from_dlpack(bf.to_dlpack()).dtype == torch.bfloat16


def test_bytes_tensors_and_helpers():
    t = pb_utils.Tensor("s", np.array(["a", "bc"]))
    assert t.as_numpy().dtype == np.object_ and list(t.as_numpy()) == [b"a", b"bc"]
    packed = pb_utils.serialize_byte_tensor(np.array([b"a", b"bc"], dtype=np.object_))
    assert list(pb_utils.deserialize_bytes_tensor(packed.item())) == [b"a", b"bc"]
    assert pb_utils.triton_string_to_numpy("TYPE_FP16") is np.float16
    assert pb_utils.numpy_to_triton_type(np.int32) == 8
    assert pb_utils.triton_to_numpy_type(13) is np.object_
    cfg = {"input": [{"name": "A"}], "output": [{"name": "B"}],
           "model_transaction_policy": {"decoupled": True}}
    assert pb_utils.get_input_config_by_name(cfg, "A") == {"name": "A"}
    assert pb_utils.get_output_config_by_name(cfg, "B") == {"name": "B"}
    assert pb_utils.using_decoupled_model_transaction_policy(cfg)


def test_request_and_response_construction():
    with pytest.raises(TypeError):
        pb_utils.InferenceRequest(model_name="m", requested_output_names=["o"])
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceRequest(model_name="m", inputs=[None], requested_output_names=[])
    req = pb_utils.InferenceRequest("m", [pb_utils.Tensor("a", np.ones(1))], ["o"],
                                    parameters={"k": 1})
    assert req.parameters() == '{"k": 1}'
    with pytest.raises(pb_utils.TritonModelException, match="execute"):
        req.exec()  # BLS only inside execute
    err = pb_utils.TritonError("boom", pb_utils.TritonError.UNAVAILABLE)
    resp = pb_utils.InferenceResponse(error=err)
    assert resp.has_error() and resp.error().message() == "boom" and resp.error().code() == 4
    assert pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL == 1
    assert pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE == 2


def test_logger_writes_each_level_to_the_server_log(caplog):
    logger = pb_utils.Logger
    with caplog.at_level(logging.DEBUG, logger="llmserve.python_model"):
        logger.log_info("info line")
        logger.log_warn("warn line")
        logger.log_error("error line")
        logger.log_verbose("verbose line")
        logger.log("by level", logger.ERROR)
        logger.log("default level")
    seen = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert seen == [("llmserve.python_model", level, text) for level, text in [
        (logging.INFO, "info line"), (logging.WARNING, "warn line"),
        (logging.ERROR, "error line"), (logging.DEBUG, "verbose line"),
        (logging.ERROR, "by level"), (logging.INFO, "default level")]]


def test_request_names_take_bytes_like_triton():
    x = [pb_utils.Tensor("a", np.ones(1))]
    from_tensor = np.array([b"add_sub"], dtype=np.object_)[0]  # what BLS examples pass
    for name in (from_tensor, np.bytes_(b"add_sub"), np.str_("add_sub"), b"add_sub"):
        req = pb_utils.InferenceRequest(model_name=name, inputs=x, requested_output_names=[b"o"],
                                        request_id=b"7")
        assert req.model_name() == "add_sub" and type(req.model_name()) is str
        assert req.requested_output_names() == ["o"] and req.request_id() == "7"
    with pytest.raises(TypeError, match="model_name"):
        pb_utils.InferenceRequest(model_name=3, inputs=x)
