"""InferenceServer: the model registry behind the frontends (health, metadata, config,
repository control, statistics, inference) and run_server(), which starts it with the
frontends and shuts it down on SIGINT/SIGTERM after draining in-flight requests.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry
from tritonclient.grpc import model_config_pb2 as mc

import llmserve
from llmserve.backends.python import context as pb_context
from llmserve.backends.python.metrics import CustomMetrics
from llmserve.core.errors import InternalError, ServerError, Unavailable
from llmserve.core.gc_freeze import freeze_loaded_heap
from llmserve.core.types import InferenceRequest, InferenceResponse
from llmserve.models import ModelManager, ModelState, ModelVersion
from llmserve.models.metrics import CacheMetricsCollector, ModelMetricsCollector
from llmserve.options import ServerOptions
from llmserve.scheduling.ensemble import EnsembleRun
from llmserve.scheduling.rate_limiter import RateLimiter
from llmserve.scheduling.request import ResponseSink, now_ns
from llmserve.scheduling.response_cache import ResponseCache, cache_size
from llmserve.scheduling.validate import dtype_api_name, requested_output_names, validate_request

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005

EXTENSIONS = [
    "classification", "sequence", "model_repository", "model_repository(unload_dependents)",
    "schedule_policy", "model_configuration", "binary_tensor_data", "parameters", "statistics",
]


def _version_arg(version: str | int) -> str:
    if version in (None, "", -1):
        return ""
    return str(version)


class InferenceServer:
    def __init__(self, options: ServerOptions, freeze_heap: bool = False):
        """freeze_heap: keep what the model loads leave out of garbage collection
        (core/gc_freeze.py), for a process that serves (not one that embeds a server)."""
        self.options = options
        self.freeze_heap = freeze_heap
        self.metrics_registry = CollectorRegistry()
        self.custom_metrics = CustomMetrics()
        self.metrics_registry.register(ModelMetricsCollector(self._metric_rows))
        self.metrics_registry.register(self.custom_metrics)
        size = cache_size(options.cache_config)  # raises for a bad --cache-config
        self.response_cache = ResponseCache(size) if size is not None else None
        if self.response_cache is not None:
            self.metrics_registry.register(CacheMetricsCollector(self.response_cache))
        self.rate_limiter = (RateLimiter(options.rate_limit_resources)
                             if options.rate_limit == "execution_count" else None)
        self.models = ModelManager(self)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._live = False
        self._accepting = False
        self._inflight = 0
        self._idle: asyncio.Event | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Scan and load per the control mode. With exit_on_error a failed model raises."""
        # The frontends' event loop shares the interpreter lock with the engine thread,
        # which holds it for its Python work between torch calls: with the default 5 ms
        # switch interval every loop wake-up could wait 5 ms, and a 503 under overload
        # took hundreds of ms. A waiting thread now gets the lock within 0.5 ms.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self.loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        pb_context.set_default_server(self)
        self._live = True
        self._accepting = True
        failures = await self.models.start()
        if self.freeze_heap:
            freeze_loaded_heap("server", collect=True)
            self.models.freeze_later_loads = True
        if failures and self.options.exit_on_error:
            detail = "; ".join(f"{n}: {r}" for n, r in failures)
            await self.stop()
            raise InternalError(f"failed to load all models: {detail}")

    async def stop(self) -> None:
        """Refuse new requests, drain in-flight ones (up to exit_timeout_secs), finalize."""
        self._accepting = False
        timeout = float(self.options.exit_timeout_secs)
        if self._idle is not None and self._inflight:
            log.info("waiting up to %.0fs for %d in-flight requests", timeout, self._inflight)
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("%d requests still in flight after %.0fs", self._inflight, timeout)
        await self.models.stop(drain_timeout=0 if self._inflight else timeout)
        self._live = False
        pb_context.clear_default_server(self)

    def is_live(self) -> bool:
        return self._live

    def is_ready(self) -> bool:
        if not (self._live and self._accepting):
            return False
        if not self.options.strict_readiness:
            return True
        for entry in list(self.models.entries.values()):
            if entry.reason == "unloaded" and not entry.ready_versions():
                continue  # unloaded on purpose
            live = [v for v in entry.versions.values() if v.reason != "unloaded"]
            if not live or not all(v.ready() for v in live):
                return False
        return True

    # -- metadata -----------------------------------------------------------------------
    def metadata(self) -> dict:
        return {"name": "llmserve", "version": llmserve.__version__, "extensions": list(EXTENSIONS)}

    def _version(self, name: str, version: str = "") -> ModelVersion:
        return self.models.resolve(name, _version_arg(version))

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self._version(name, version).config

    def output_labels(self, name: str, version: str, output: str) -> list[str] | None:
        """Lines of the output's label_filename (classification extension), if it has one."""
        mv = self._version(name, version)
        cache = mv.__dict__.setdefault("_labels", {})
        if output not in cache:
            from llmserve.repository import label_file_path

            labels = None
            for out in mv.config.output:
                if out.name == output and out.label_filename:
                    path = label_file_path(mv.model_dir, out)
                    labels = path.read_text(encoding="utf-8").splitlines() if path else None
            cache[output] = labels
        return cache[output]

    def model_metadata(self, name: str, version: str = "") -> dict:
        mv = self._version(name, version)
        entry = self.models.entries[name]
        config = mv.config
        # the tensor lists follow from the version's fixed config: built once (every
        # generate request reads them, and an LLM model set declares dozens of inputs)
        tensors = mv.__dict__.get("_metadata_tensors")
        if tensors is None:
            lead = [-1] if config.max_batch_size > 0 else []
            tensors = mv.__dict__["_metadata_tensors"] = tuple(
                [{"name": t.name, "datatype": dtype_api_name(t.data_type),
                  "shape": lead + [int(d) for d in t.dims]} for t in items]
                for items in (config.input, config.output))
        return {
            "name": name,
            "versions": [str(v.version) for v in entry.ready_versions()],
            "platform": config.platform or config.backend,
            "inputs": tensors[0],
            "outputs": tensors[1],
        }

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return self._version(name, version).ready()
        except ServerError:
            return False

    def is_decoupled(self, name: str, version: str = "") -> bool:
        return self._version(name, version).decoupled

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        rows: list[dict] = []
        known = set()
        for name, entry in sorted(self.models.entries.items()):
            known.add(name)
            rows.extend(entry.index_rows())
        try:
            from llmserve.repository import scan_repositories

            def skipped(problem: ServerError) -> None:
                log.warning("repository index: %s", problem)

            for name in sorted(set(scan_repositories(self.models.roots, skipped)) - known):
                rows.append({"name": name, "version": "", "state": "", "reason": ""})
        except ServerError as exc:
            log.warning("repository index: %s", exc)
        if ready_only:
            rows = [r for r in rows if r["state"] == ModelState.READY.value]
        return sorted(rows, key=lambda r: (r["name"], r["version"]))

    # -- repository control -------------------------------------------------------------
    async def load_model(self, name: str, config_json: str | None = None,
                         files: dict[str, bytes] | None = None) -> None:
        if self.options.model_control_mode != "explicit":
            raise Unavailable("explicit model load / unload is not allowed if polling is enabled"
                              if self.options.model_control_mode == "poll" else
                              "explicit model load / unload is not allowed in model control mode 'none'")
        await self.models.load(name, config_json, files)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        if self.options.model_control_mode != "explicit":
            raise Unavailable("explicit model load / unload is not allowed if polling is enabled"
                              if self.options.model_control_mode == "poll" else
                              "explicit model load / unload is not allowed in model control mode 'none'")
        await self.models.unload(name, unload_dependents, float(self.options.exit_timeout_secs))

    # -- statistics ---------------------------------------------------------------------
    def statistics(self, name: str = "", version: str = "") -> dict:
        if name:
            if version:
                versions = [self._version(name, version)]
            else:
                entry = self.models.entries.get(name)
                if entry is None or not entry.ready_versions():
                    self._version(name)  # raises the right error
                versions = entry.ready_versions()
        else:
            versions = [v for v in self.models.all_versions() if v.state == ModelState.READY]
        return {"model_stats": [v.stats.to_json(v.name, v.version)
                                for v in sorted(versions, key=lambda v: (v.name, v.version))]}

    def _metric_rows(self):
        for v in self.models.all_versions():
            if v.state in (ModelState.READY, ModelState.UNLOADING):
                pending = v.queue.pending_count() if v.queue is not None else 0
                yield (v.name, v.version, v.stats.to_json(v.name, v.version), pending,
                       v.cache is not None)

    # -- inference ----------------------------------------------------------------------
    async def infer(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Responses for a client request; request errors raise before the first yield."""
        if not self._accepting:
            raise Unavailable("Server is shutting down" if self._live else "Server is not started")
        self._inflight += 1
        assert self._idle is not None
        self._idle.clear()
        inner = self.infer_internal(request)
        try:
            async for resp in inner:
                if resp.error is not None:
                    _log_failure(request, resp.error, logging.INFO)
                yield resp
        except ServerError as exc:  # refused before its first response (validation, queue)
            _log_failure(request, exc, logging.INFO)
            raise
        finally:
            await inner.aclose()  # runs its cleanup now, not when garbage collected
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def submit_direct(self, request: InferenceRequest,
                      deliver: Callable[[InferenceResponse], None],
                      track_reads: bool = False) -> ResponseSink | None:
        """A BLS call's way in without the event loop: submit `request` to a non-ensemble
        model from any thread, its responses going to deliver() on the thread that produces
        them. Returns the request's sink (track_reads: its reader will call read() for
        each response it takes); None for an ensemble (its steps run on the loop: use
        infer_internal). A refused request raises ServerError."""
        if not request.arrival_ns:
            request.arrival_ns = now_ns()
        mv = self.models.resolve(request.model_name, _version_arg(request.model_version))
        if mv.is_ensemble:
            return None

        def logged(resp: InferenceResponse) -> None:
            if resp.error is not None:
                _log_failure(request, resp.error, logging.DEBUG)
            deliver(resp)

        sreq = mv.prepare(request, logged)
        if track_reads:
            sreq.sink.track_reads()
        mv.submit(sreq)
        return sreq.sink

    async def infer_internal(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """infer() without the shutdown gate: BLS calls and ensemble steps of in-flight requests."""
        if not request.arrival_ns:
            request.arrival_ns = now_ns()
        mv = self.models.resolve(request.model_name, _version_arg(request.model_version))
        finished = False
        try:
            if mv.is_ensemble:
                inputs, batch_size = validate_request(mv.config, request)
                names = requested_output_names(mv.config, request)
                run = EnsembleRun(self, mv.config, mv.version, request, inputs, names,
                                  mv.step_limiters, mv.ensemble_steps)
                stream = run.responses()
                if mv.cache is not None and not run.streaming:  # never a decoupled ensemble
                    stream = mv.cache.ensemble(request, stream)
                counted = False

                def count(ok: bool) -> None:
                    # Triton counts an ensemble request like any other: success or failure
                    # with its duration, and one execution of its batch. Counted before the
                    # final response leaves, so a client that reads statistics next sees it.
                    nonlocal counted
                    counted = True
                    mv.stats.request_done(ok, now_ns() - request.arrival_ns)
                    if ok and not getattr(stream, "hit", False):  # a cache hit runs nothing
                        mv.stats.executed(batch_size, 1, 0, 0, 0)

                try:
                    async for resp in stream:
                        if resp.final:
                            count(resp.error is None)
                            yield resp
                            return
                        yield resp
                finally:
                    await stream.aclose()
                    if not counted:  # cancelled or failed before a final response
                        count(False)
                return
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[InferenceResponse] = asyncio.Queue()

            def deliver(resp: InferenceResponse) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, resp)
                except RuntimeError:  # the consumer's loop is closed
                    pass

            sreq = mv.prepare(request, deliver)
            sink = sreq.sink
            sink.track_reads()
            mv.submit(sreq)
            while True:
                resp = await queue.get()
                sink.read()
                finished = resp.final
                if resp.error is not None:
                    _log_failure(request, resp.error, logging.DEBUG)
                yield resp
                if finished:
                    return
        finally:
            if not finished:
                request.cancel.cancel()


def _log_failure(request: InferenceRequest, error: BaseException, level: int) -> None:
    """A failed request in the log, as Triton logs it: model, request id and the error
    (INFO for a client's request, verbose for an ensemble step or BLS call)."""
    if not log.isEnabledFor(level):
        return
    message = error.message if isinstance(error, ServerError) else str(error)
    log.log(level, "request failed: model '%s' version %s, request id '%s': %s",
            _printable(request.model_name), request.model_version or "latest",
            _printable(request.id) or "<id_unknown>", _printable(message))


def _printable(text: object) -> str:
    """Client-chosen text with control characters escaped, so it cannot forge log lines."""
    s = str(text)
    return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


# -- process entry point ---------------------------------------------------------------
async def _serve(options: ServerOptions) -> int:
    from llmserve.frontends import start_frontends

    server = InferenceServer(options, freeze_heap=True)
    try:
        await server.start()
    except ServerError as exc:
        log.error("%s", exc)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    try:
        frontends = await start_frontends(server, options)
    except Exception as exc:
        log.error("failed to start the frontends: %s", exc)
        await server.stop()
        return 1
    log.info("llmserve is serving")
    await stop.wait()
    log.info("shutting down")
    server._accepting = False
    await server.stop()
    await frontends.stop()
    return 0


def run_server(options: ServerOptions) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    if threading.current_thread() is not threading.main_thread():
        raise InternalError("run_server must be called from the main thread")
    from llmserve.frontends import event_loop

    try:
        return event_loop.run(_serve(options))
    except KeyboardInterrupt:
        return 0
