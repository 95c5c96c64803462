"""What the registry knows about one model name: its folder, loaded versions, the state
and reason shown when no version is loaded, and a file signature for poll mode."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.models.version import ModelState, ModelVersion


@dataclass(eq=False)
class ModelEntry:
    name: str
    model_dir: Path | None = None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    signature: tuple = ()
    temp_dir: Path | None = None  # files given with a load request
    config: mc.ModelConfig | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def ready_versions(self) -> list[ModelVersion]:
        return [v for _, v in sorted(self.versions.items()) if v.state == ModelState.READY]

    def index_rows(self) -> list[dict]:
        if not self.versions:
            return [{"name": self.name, "version": "", "state": self.state.value,
                     "reason": self.reason}]
        return [{"name": self.name, "version": str(n), "state": v.state.value, "reason": v.reason}
                for n, v in sorted(self.versions.items())]


def dir_signature(model_dir: Path | None) -> tuple:
    """(relative path, mtime, size) of every file: poll mode reloads when it changes."""
    if model_dir is None or not model_dir.is_dir():
        return ()
    rows = []
    for root, dirs, files in os.walk(model_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            p = Path(root) / f
            try:
                st = p.stat()
            except OSError:
                continue
            rows.append((str(p.relative_to(model_dir)), st.st_mtime_ns, st.st_size))
    return tuple(sorted(rows))
