"""Tiny ONNX models built with onnx.helper for the onnxruntime backend and auto-complete
tests, plus a writer for model folders."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def _model(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def add_sub(batch="batch", dims=(4,), elem=TensorProto.FLOAT) -> bytes:
    """INPUT0, INPUT1 -> OUTPUT0 = a + b, OUTPUT1 = a - b; `batch` is the first dim
    (a name for a dynamic dim, an int for a fixed one, None for no batch dim)."""
    shape = ([batch] if batch is not None else []) + list(dims)

    def vi(name):
        return helper.make_tensor_value_info(name, elem, shape)

    return _model([helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
                   helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
                  [vi("INPUT0"), vi("INPUT1")], [vi("OUTPUT0"), vi("OUTPUT1")])


def string_identity() -> bytes:
    """TEXT (string [batch, 1]) -> ECHO (the same strings)."""
    return _model([helper.make_node("Identity", ["TEXT"], ["ECHO"])],
                  [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["b", 1])],
                  [helper.make_tensor_value_info("ECHO", TensorProto.STRING, ["b", 1])])


def scale_batch_only() -> bytes:
    """X (float [batch]) -> Y = 2 * X: a batch-only tensor (auto-complete gives dims [1],
    reshape [])."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    return _model([helper.make_node("Mul", ["X", "two"], ["Y"])],
                  [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n"])],
                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n"])], [two])


def tiny_classifier(weights) -> bytes:
    """densenet_onnx's interface in miniature: data_0 [1, 3, 2, 2] -> fc6_1 [1, K, 1, 1]
    with fc6_1 = flatten(data_0) @ weights (weights: float32 [12, K])."""
    k = weights.shape[1]
    w = helper.make_tensor("w", TensorProto.FLOAT, list(weights.shape),
                           weights.reshape(-1).tolist())
    flat = helper.make_tensor("flat", TensorProto.INT64, [2], [1, 12])
    out_shape = helper.make_tensor("out_shape", TensorProto.INT64, [4], [1, k, 1, 1])
    return _model([helper.make_node("Reshape", ["data_0", "flat"], ["x"]),
                   helper.make_node("MatMul", ["x", "w"], ["y"]),
                   helper.make_node("Reshape", ["y", "out_shape"], ["fc6_1"])],
                  [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 2, 2])],
                  [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, k, 1, 1])],
                  [w, flat, out_shape])


def write_onnx(repo: Path, name: str, model: bytes, config: str | None = None,
               version: int = 1, folder: bool = False) -> Path:
    """repo/name/[config.pbtxt]/<version>/model.onnx (or model.onnx/model.onnx)."""
    model_dir = repo / name
    vdir = model_dir / str(version)
    target = vdir / "model.onnx"
    if folder:
        target = target / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(model)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def state_accumulator() -> bytes:
    """An implicit-state model (int32 [batch, 1] tensors): OUTPUT_STATE = INPUT +
    INPUT_STATE * (1 - START), and OUTPUT the same; READY is taken but unused."""
    def vi(name):
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["b", 1])

    one = helper.make_tensor("one", TensorProto.INT32, [], [1])
    return _model([helper.make_node("Sub", ["one", "START"], ["not_start"]),
                   helper.make_node("Mul", ["INPUT_STATE", "not_start"], ["kept"]),
                   helper.make_node("Add", ["kept", "INPUT"], ["OUTPUT_STATE"]),
                   helper.make_node("Identity", ["OUTPUT_STATE"], ["OUTPUT"])],
                  [vi("INPUT"), vi("INPUT_STATE"), vi("START"), vi("READY")],
                  [vi("OUTPUT"), vi("OUTPUT_STATE")], [one])
