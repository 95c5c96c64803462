"""The small interface every backend implements: a loaded model version makes
instances; an instance executes batches of requests and answers each one.
"""

from __future__ import annotations

import concurrent.futures
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import ServerError
from llmserve.options import ServerOptions
from llmserve.scheduling.request import SchedRequest


@dataclass(slots=True)
class ModelSpec:
    """What a backend needs to load one version of a model."""

    name: str
    version: int
    model_dir: Path  # the model's folder (repository root / name, or a load-API temp dir)
    config: mc.ModelConfig  # completed and validated
    config_json: str  # as the config endpoint shows it
    options: ServerOptions
    server: Any  # the InferenceServer (BLS, model control and metrics for Python models)
    # on_fatal(reason): what serves the version is lost (a dead engine or stub process);
    # it goes UNAVAILABLE with the reason and its instances are released
    on_fatal: Callable[[str], None] | None = None

    @property
    def version_dir(self) -> Path:
        return self.model_dir / str(self.version)

    @property
    def decoupled(self) -> bool:
        return bool(self.config.model_transaction_policy.decoupled)


@dataclass(slots=True)
class InstanceSpec:
    """One execution instance from an instance_group."""

    name: str  # e.g. add_sub_0_0 (group name + index)
    kind: str  # KIND_CPU | KIND_GPU | KIND_MODEL
    device_id: int
    group_name: str
    index: int


class BackendInstance(ABC):
    """Runs on its own worker thread. execute() must answer every request of the batch
    (one final response each, through SchedRequest.respond/fail) or requeue it; it may
    return a Future when the work completes later (async models)."""

    @abstractmethod
    def execute(self, batch: list[SchedRequest]) -> concurrent.futures.Future | None: ...

    def is_ready(self) -> bool:
        return True

    def finalize(self) -> None:
        """Release what the instance holds; called once on unload."""
        return None


class BackendModel(ABC):
    """A loaded model version; makes one BackendInstance per configured instance."""

    @abstractmethod
    def create_instance(self, instance: InstanceSpec) -> BackendInstance: ...

    def admission_error(self, request: SchedRequest) -> ServerError | None:
        """An error to answer `request` with at once, before it is queued (an LLM
        executor whose queue is full); None admits it."""
        return None

    def unload(self) -> None:
        """Release model-level state after every instance was finalized."""
        return None
