"""The openvino backend (Triton's OpenVINO backend): IR (model.xml + model.bin) or any
file OpenVINO reads (ONNX, ...), compiled once per device and shared by the instances."""

from llmserve.backends.openvino.backend import load_model

__all__ = ["load_model"]
