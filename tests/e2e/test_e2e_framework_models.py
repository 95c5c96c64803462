"""End to end: ONNX and TorchScript models in Triton's published example layouts
(densenet_onnx-style config with reshape and labels, an ONNX model without config.pbtxt,
a TorchScript INPUT__0/OUTPUT__0 model) behind the real frontends, via tritonclient."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options
from onnx_fixtures import add_sub, tiny_classifier, write_onnx

DENSENET_CONFIG = """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 2, 2 ]
    reshape { shape: [ 1, 3, 2, 2 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 5 ]
    reshape { shape: [ 1, 5, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
"""
TORCH_CONFIG = """
name: "simple_torch"
platform: "pytorch_libtorch"
max_batch_size: 4
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""
HALF_CONFIGS = {  # FP16 as Triton's PyTorch backend takes it; BF16 an llmserve addition
    dtype: f"""
platform: "pytorch_libtorch"
max_batch_size: 4
input [ {{ name: "INPUT__0" data_type: TYPE_{dtype} dims: [ 3 ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_{dtype} dims: [ 3 ] }} ]
""" for dtype in ("FP16", "BF16")}
LABELS = ["tench", "goldfish", "shark", "tiger", "hammerhead"]


class Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return x * 3.0


@pytest.fixture(scope="module")
def framework_live(tmp_path_factory):
    repo = tmp_path_factory.mktemp("framework_repo")
    weights = np.zeros((12, 5), np.float32)
    weights[0, 3] = 1.0  # class 3 ("tiger") follows the first pixel, class 1 half of it
    weights[0, 1] = 0.5
    model_dir = write_onnx(repo, "densenet_onnx", tiny_classifier(weights), DENSENET_CONFIG)
    (model_dir / "densenet_labels.txt").write_text("\n".join(LABELS) + "\n")
    write_onnx(repo, "onnx_auto", add_sub())
    torch_dir = repo / "simple_torch" / "1"
    torch_dir.mkdir(parents=True)
    torch.jit.save(torch.jit.script(Scale()), str(torch_dir / "model.pt"))
    (repo / "simple_torch" / "config.pbtxt").write_text(TORCH_CONFIG)
    for dtype, config in HALF_CONFIGS.items():
        model_dir = repo / f"torch_{dtype.lower()}"
        (model_dir / "1").mkdir(parents=True)
        torch.jit.save(torch.jit.script(Scale()), str(model_dir / "1" / "model.pt"))
        (model_dir / "config.pbtxt").write_text(config)
    server = LiveServer(e2e_options(model_repositories=[repo]))
    yield server
    server.stop()


def test_densenet_style_classification_over_http(framework_live):
    client = th.InferenceServerClient(framework_live.http_url)
    try:
        assert client.is_model_ready("densenet_onnx")
        image = np.zeros((3, 2, 2), np.float32)
        image[0, 0, 0] = 2.0
        inp = th.InferInput("data_0", [3, 2, 2], "FP32")
        inp.set_data_from_numpy(image)
        out = th.InferRequestedOutput("fc6_1", class_count=2)
        result = client.infer("densenet_onnx", [inp], outputs=[out])
        top = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("fc6_1")]
        # "score:index:label", the label from the output's label_filename
        assert top == [f"2.000000:3:{LABELS[3]}", f"1.000000:1:{LABELS[1]}"]
        grpc = tg.InferenceServerClient(framework_live.grpc_url)
        try:
            g_out = tg.InferRequestedOutput("fc6_1", class_count=1)
            g_top = grpc.infer("densenet_onnx", [_grpc_input(image)], outputs=[g_out])
            assert [x.decode() for x in g_top.as_numpy("fc6_1")] == [f"2.000000:3:{LABELS[3]}"]
        finally:
            grpc.close()
        raw = client.infer("densenet_onnx", [inp]).as_numpy("fc6_1")
        np.testing.assert_allclose(raw, [0, 1, 0, 2, 0])
    finally:
        client.close()


def _grpc_input(image: np.ndarray) -> tg.InferInput:
    inp = tg.InferInput("data_0", list(image.shape), "FP32")
    inp.set_data_from_numpy(image)
    return inp


def test_auto_completed_onnx_config_and_grpc_infer(framework_live):
    client = tg.InferenceServerClient(framework_live.grpc_url)
    try:
        config = client.get_model_config("onnx_auto", as_json=True)["config"]
        assert config["max_batch_size"] == 4 and "dynamic_batching" in config
        assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
        a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
        inputs = [tg.InferInput("INPUT0", [2, 4], "FP32"), tg.InferInput("INPUT1", [2, 4], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a)
        result = client.infer("onnx_auto", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros_like(a))
    finally:
        client.close()


def test_torchscript_model_over_grpc(framework_live):
    client = tg.InferenceServerClient(framework_live.grpc_url)
    try:
        meta = client.get_model_metadata("simple_torch", as_json=True)
        assert meta["platform"] == "pytorch_libtorch"
        x = np.array([[1, 2, 3]], np.float32)
        inp = tg.InferInput("INPUT__0", [1, 3], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("simple_torch", [inp])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), x * 3)
    finally:
        client.close()


@pytest.mark.parametrize("module, dtype, numpy_type", [(th, "FP16", np.float16),
                                                      (tg, "BF16", ml_dtypes.bfloat16)])
def test_torchscript_half_precision(framework_live, module, dtype, numpy_type):
    url = framework_live.http_url if module is th else framework_live.grpc_url
    client = module.InferenceServerClient(url)
    try:
        x = np.array([[1, -2.5, 0.75]], numpy_type)  # exact in both half formats, and x * 3 too
        inp = module.InferInput("INPUT__0", [1, 3], dtype)
        inp.set_data_from_numpy(x)
        result = client.infer(f"torch_{dtype.lower()}", [inp])
        out = result.as_numpy("OUTPUT__0")
        assert out.dtype == numpy_type
        np.testing.assert_array_equal(out, x * 3)
    finally:
        client.close()
