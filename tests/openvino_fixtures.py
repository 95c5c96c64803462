"""Small OpenVINO models saved as IR (model.xml + model.bin) for the openvino backend tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_add_sub(path: Path, *, batch_layout: bool = False) -> Path:
    """INPUT0, INPUT1 [-1, 4] fp32 -> OUTPUT0 = sum, OUTPUT1 = difference."""
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter(ov.PartialShape([-1, 4]), ov.Type.f32, name="INPUT0")
    y = ops.parameter(ov.PartialShape([-1, 4]), ov.Type.f32, name="INPUT1")
    total, diff = ops.add(x, y), ops.subtract(x, y)
    total.output(0).get_tensor().set_names({"OUTPUT0"})
    diff.output(0).get_tensor().set_names({"OUTPUT1"})
    model = ov.Model([total, diff], [x, y], "add_sub")
    if batch_layout:
        for param in (x, y):
            param.set_layout(ov.Layout("NC"))
        for out in model.outputs:
            out.node.set_layout(ov.Layout("NC"))
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path))
    return path


def add_sub_expected(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a + b, a - b
