"""Builds throwaway Triton model repositories on disk for the tests (repository, config)."""

from __future__ import annotations

from pathlib import Path

PY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return []
"""

IDENTITY_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""


def write_model(root: Path, name: str, config: str | None = IDENTITY_CONFIG,
                versions: dict[int | str, dict[str, str]] | None = None,
                extra: dict[str, str] | None = None) -> Path:
    """<root>/<name>/config.pbtxt (unless config is None), version folders with files, and
    `extra` files (relative paths, e.g. "configs/h100.pbtxt")."""
    model_dir = Path(root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    for version, files in (versions if versions is not None else {1: {"model.py": PY_MODEL}}
                           ).items():
        vdir = model_dir / str(version)
        vdir.mkdir(exist_ok=True)
        for rel, content in files.items():
            path = vdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    for rel, content in (extra or {}).items():
        path = model_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return model_dir
