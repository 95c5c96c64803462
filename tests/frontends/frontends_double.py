"""An in-test double of D's InferenceServer contract (brief "D -> E") with a few models,
and a helper that runs it behind the real frontends on a background asyncio loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import (
    InternalError,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
)
from llmserve.core.types import InferenceRequest, InferenceResponse, Tensor
from llmserve.frontends import Frontends, start_frontends
from llmserve.options import ServerOptions

# name -> (max_batch_size, decoupled, inputs, outputs); tensors are (name, config type, dims)
MODELS = {
    "simple": (8, False, [("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])],
               [("OUTPUT0", "TYPE_INT32", [16]), ("OUTPUT1", "TYPE_INT32", [16])]),
    "identity": (0, False, [("INPUT0", "TYPE_STRING", [-1])], [("OUTPUT0", "TYPE_STRING", [-1])]),
    "repeat": (0, True, [("IN", "TYPE_INT32", [-1])], [("OUT", "TYPE_INT32", [1])]),
    "slow": (0, False, [("INPUT0", "TYPE_INT32", [-1])], [("OUTPUT0", "TYPE_INT32", [-1])]),
    "slow_stream": (0, True, [("INPUT0", "TYPE_INT32", [-1])], [("OUTPUT0", "TYPE_INT32", [-1])]),
    "gen": (4, False, [("text_input", "TYPE_STRING", [1]), ("max_tokens", "TYPE_INT32", [1])],
            [("text_output", "TYPE_STRING", [1]), ("count", "TYPE_INT32", [1])]),
    "gen_stream": (4, True, [("text_input", "TYPE_STRING", [1]), ("max_tokens", "TYPE_INT32", [1])],
                   [("text_output", "TYPE_STRING", [1]), ("count", "TYPE_INT32", [1])]),
    "failing": (0, False, [("INPUT0", "TYPE_INT32", [-1])], [("OUTPUT0", "TYPE_INT32", [-1])]),
    "full": (0, False, [("INPUT0", "TYPE_INT32", [-1])], [("OUTPUT0", "TYPE_INT32", [-1])]),
    "unready": (0, False, [("INPUT0", "TYPE_INT32", [-1])], [("OUTPUT0", "TYPE_INT32", [-1])]),
}
API = {"TYPE_INT32": "INT32", "TYPE_STRING": "BYTES"}


class FakeServer:
    def __init__(self) -> None:
        self.metrics_registry = CollectorRegistry()
        self.success = Counter(
            "nv_inference_request_success", "successful requests", ["model", "version"],
            registry=self.metrics_registry,
        )
        self.ready = {name: name != "unready" for name in MODELS}
        self.cancelled: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}
        self.loads: list[tuple] = []
        self.unloads: list[tuple] = []
        self.live = True
        self.server_ready = True
        self.last_request: InferenceRequest | None = None

    # --- lookups -------------------------------------------------------------------------
    def _known(self, name: str, version: str = "") -> tuple:
        if name not in MODELS:
            raise InvalidArgument(f"Request for unknown model: '{name}' is not found")
        if not self.ready[name]:
            raise NotFound(f"Request for unknown model: '{name}' has no available versions")
        if version not in ("", "1"):
            raise Unavailable(
                f"Request for unknown model: '{name}' version {version} is not at ready state"
            )
        return MODELS[name]

    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> bool:
        return self.server_ready

    def metadata(self) -> dict:
        return {"name": "llmserve", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    def model_metadata(self, name: str, version: str = "") -> dict:
        mbs, _, inputs, outputs = self._known(name, version)
        batch = [-1] if mbs > 0 else []

        def tensors(items: list) -> list:
            return [{"name": n, "datatype": API[t], "shape": batch + d} for n, t, d in items]

        return {"name": name, "versions": ["1"], "platform": "python",
                "inputs": tensors(inputs), "outputs": tensors(outputs)}

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        mbs, decoupled, inputs, outputs = self._known(name, version)
        cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=mbs)
        cfg.model_transaction_policy.decoupled = decoupled
        for n, t, d in inputs:
            cfg.input.add(name=n, data_type=mc.DataType.Value(t), dims=d)
        for n, t, d in outputs:
            cfg.output.add(name=n, data_type=mc.DataType.Value(t), dims=d)
        return cfg

    def model_ready(self, name: str, version: str = "") -> bool:
        if name not in MODELS:
            return False
        return self.ready[name] and version in ("", "1")

    def is_decoupled(self, name: str, version: str = "") -> bool:
        return self._known(name, version)[1]

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        rows = [
            {"name": n, "version": "1", "state": "READY" if r else "UNAVAILABLE",
             "reason": "" if r else "unloaded"}
            for n, r in self.ready.items()
        ]
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    async def load_model(self, name: str, config_json: str | None = None,
                         files: dict[str, bytes] | None = None) -> None:
        if name not in MODELS:
            raise InternalError(f"failed to load '{name}', failed to poll from model repository")
        self.loads.append((name, config_json, files))
        self.ready[name] = True

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        if name not in MODELS:
            raise InvalidArgument(f"failed to unload '{name}', no version is available")
        self.unloads.append((name, unload_dependents))
        self.ready[name] = False

    def statistics(self, name: str = "", version: str = "") -> dict:
        names = [name] if name else [n for n, r in self.ready.items() if r]
        if name:
            self._known(name, version)
        zero = {"count": 0, "ns": 0}
        return {"model_stats": [
            {"name": n, "version": "1", "last_inference": 0, "inference_count": 3,
             "execution_count": 2,
             "inference_stats": {k: dict(zero) for k in (
                 "success", "fail", "queue", "compute_input", "compute_infer",
                 "compute_output", "cache_hit", "cache_miss")}}
            for n in names]}

    # --- inference -----------------------------------------------------------------------
    def event(self, table: dict, name: str) -> threading.Event:
        return table.setdefault(name, threading.Event())

    def fresh_events(self, name: str) -> tuple[threading.Event, threading.Event]:
        """New (started, cancelled) events for the next request to a slow model."""
        self.started[name] = threading.Event()
        self.cancelled[name] = threading.Event()
        return self.started[name], self.cancelled[name]

    async def infer(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        name = request.model_name
        version = "" if request.model_version < 0 else str(request.model_version)
        mbs, decoupled, inputs, _ = self._known(name, version)
        if name == "full":
            raise Unavailable("Exceeds maximum queue size")
        for n, t, dims in inputs:
            if n not in request.inputs:
                raise InvalidArgument(f"expected {len(inputs)} inputs but got {len(request.inputs)}"
                                      f" inputs for model '{name}'. Got input(s) "
                                      f"{sorted(request.inputs)}, but missing required input "
                                      f"'{n}'")
            tensor = request.inputs[n]
            if name != "identity" and tensor.datatype != API[t]:
                raise InvalidArgument(f"inference input '{n}' data-type is '{tensor.datatype}', "
                                      f"but model '{name}' expects '{API[t]}'")
            shape = tensor.shape[1:] if mbs > 0 else tensor.shape
            mismatch = len(dims) != len(shape) or any(
                d not in (-1, s) for d, s in zip(dims, shape, strict=False))
            if name != "identity" and mismatch:
                raise InvalidArgument(f"unexpected shape for input '{n}' for model '{name}'. "
                                      f"Expected {dims}, got {tensor.shape}")
        self.last_request = request
        try:
            async for response in self._run(request):
                yield response
        except (GeneratorExit, asyncio.CancelledError):
            request.cancel.cancel()
            raise
        self.success.labels(name, "1").inc()

    def _response(self, request: InferenceRequest, outputs: list[Tensor],
                  final: bool = True) -> InferenceResponse:
        wanted = request.requested_outputs
        if wanted is not None:
            names = {r.name for r in wanted}
            outputs = [t for t in outputs if t.name in names]
        return InferenceResponse(request.model_name, 1, request.id, outputs,
                                 dict(request.parameters), None, final)

    async def _run(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        name, inputs = request.model_name, request.inputs
        if name == "simple":
            a, b = inputs["INPUT0"].data, inputs["INPUT1"].data
            yield self._response(request, [Tensor("OUTPUT0", "INT32", a + b),
                                           Tensor("OUTPUT1", "INT32", a - b)])
        elif name == "identity":
            t = inputs["INPUT0"]
            yield self._response(request, [Tensor("OUTPUT0", t.datatype, t.data)])
        elif name == "repeat":
            values = inputs["IN"].data.reshape(-1)
            for v in values:
                await asyncio.sleep(0.001)
                yield self._response(request, [Tensor("OUT", "INT32", np.array([v], np.int32))],
                                     final=False)
            yield InferenceResponse(name, 1, request.id, final=True)
        elif name in ("slow", "slow_stream"):
            # like a model on its own thread, notice the token whoever sets it
            request.cancel.add_callback(self.event(self.cancelled, name).set)
            self.event(self.started, name).set()
            if name == "slow_stream":
                yield self._response(request, [Tensor("OUTPUT0", "INT32", inputs["INPUT0"].data)],
                                     final=False)
            while not request.cancel.is_cancelled():
                await asyncio.sleep(0.01)
            yield InferenceResponse(name, 1, request.id, error=InternalError("cancelled"))
        elif name in ("gen", "gen_stream"):
            text = inputs["text_input"].data.reshape(-1)[0].decode()
            n = int(inputs["max_tokens"].data.reshape(-1)[0])
            if n < 0:
                yield InferenceResponse(name, 1, request.id, error=Unsupported("negative max_tokens"))
                return
            for i in range(n):
                if text == "boom" and i == 1:
                    yield InferenceResponse(name, 1, request.id, error=InternalError("boom at 1"))
                    return
                out = np.array([[f"{text} {i}".encode()]], dtype=np.object_)
                yield self._response(request, [Tensor("text_output", "BYTES", out),
                                               Tensor("count", "INT32", np.array([[i]], np.int32))],
                                     final=name == "gen")
            if name == "gen_stream":
                yield InferenceResponse(name, 1, request.id, final=True)
        elif name == "failing":
            yield InferenceResponse(name, 1, request.id, error=InternalError("model failed"))


class Running:
    """FakeServer + real frontends on a background loop; stop() tears both down."""

    def __init__(self, options: ServerOptions | None = None, loop_factory=None) -> None:  # noqa: ANN001
        self.fake = FakeServer()
        self.options = options or ServerOptions(
            http_address="127.0.0.1", http_port=0, grpc_address="127.0.0.1", grpc_port=0,
            metrics_address="127.0.0.1", metrics_port=0,
        )
        self.loop = (loop_factory or asyncio.new_event_loop)()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.frontends: Frontends = self.call(start_frontends(self.fake, self.options))

    def call(self, coro):  # noqa: ANN001
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.frontends.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.frontends.grpc_port}"

    def stop(self) -> None:
        self.call(self.frontends.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
