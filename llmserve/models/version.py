"""One loaded version of a model: its backend instances (each on its own worker thread),
request queue, readiness state, in-flight accounting and statistics."""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends import (
    BackendInstance,
    BackendModel,
    InstanceSpec,
    ModelSpec,
    load_backend_model,
)
from llmserve.core.errors import InternalError, InvalidArgument, ServerError, Unavailable
from llmserve.core.types import InferenceRequest, InferenceResponse
from llmserve.models.stats import ModelStats
from llmserve.models.warmup import warm_up
from llmserve.repository import backend_of, config_to_json_dict
from llmserve.scheduling.batcher import RequestQueue
from llmserve.scheduling.cache_use import ModelCache
from llmserve.scheduling.ensemble import ensemble_steps
from llmserve.scheduling.host_policy import host_policy_cpus, pin_current_thread
from llmserve.scheduling.ordering import ResponseOrderer
from llmserve.scheduling.rate_limiter import Grantee
from llmserve.scheduling.request import ResponseSink, SchedRequest, now_ns
from llmserve.scheduling.sequence_batcher import SequenceBatcher
from llmserve.scheduling.sequence_controls import uses_sequence_batcher
from llmserve.scheduling.step_limiter import limiters_for
from llmserve.scheduling.validate import output_transform, requested_output_names, validate_request

log = logging.getLogger(__name__)

_WORKER_EXIT_SECS = 30.0  # without a drain limit: how long an instance may take to stop


class ModelState(str, enum.Enum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


def instance_specs(config: mc.ModelConfig) -> list[InstanceSpec]:
    specs = []
    for gi, group in enumerate(config.instance_group):
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        name = group.name or f"{config.name}_{gi}"
        devices = list(group.gpus) if kind == "KIND_GPU" and group.gpus else [0]
        index = 0
        for device in devices:
            for _ in range(max(int(group.count), 1)):
                specs.append(InstanceSpec(f"{name}_{index}", kind, int(device), name, index))
                index += 1
    return specs


def _group_of(config: mc.ModelConfig, ispec: InstanceSpec) -> mc.ModelInstanceGroup:
    for gi, group in enumerate(config.instance_group):
        if (group.name or f"{config.name}_{gi}") == ispec.group_name:
            return group
    return mc.ModelInstanceGroup()


class ModelVersion:
    def __init__(self, name: str, version: int, model_dir: Path, config: mc.ModelConfig,
                 server: Any):
        self.name = name
        self.version = version
        self.model_dir = model_dir
        self.config = config
        self.server = server
        self.backend = backend_of(config)
        self.is_ensemble = self.backend == "ensemble"
        self.decoupled = bool(config.model_transaction_policy.decoupled)
        self.state = ModelState.LOADING
        self.reason = ""
        self.stats = ModelStats()
        self.cache = ModelCache.for_model(server, config, version, self.stats)
        # ensemble_scheduling.max_inflight_requests: slots per step, shared by its requests
        self.step_limiters = limiters_for(config) if self.is_ensemble else None
        self.ensemble_steps = ensemble_steps(config) if self.is_ensemble else None
        self.queue: RequestQueue | SequenceBatcher | None = None
        if uses_sequence_batcher(config) and not self.is_ensemble:
            self.queue = SequenceBatcher(config, len(instance_specs(config)))
        elif not self.is_ensemble:
            self.queue = RequestQueue(config)
        preserve = config.HasField("dynamic_batching") and config.dynamic_batching.preserve_ordering
        self.orderer = ResponseOrderer() if preserve else None
        self.sequence_needs_corrid = (config.HasField("sequence_batching")
                                      and not config.sequence_batching.iterative_sequence)
        self._backend_model: BackendModel | None = None
        self._instances: list[BackendInstance] = []
        self._workers: list[threading.Thread] = []
        self._grantees: list[Grantee] = []
        self._idle = threading.Condition()
        self._inflight = 0
        self._live: dict[int, SchedRequest] = {}  # in flight, by id(): failed at unload
        self._release_lock = threading.Lock()  # unload and fail() release instances once

    # -- lifecycle ----------------------------------------------------------------------
    def load(self) -> None:
        """Blocking: load the backend and start every instance; raises on failure."""
        if self.is_ensemble:
            self.state = ModelState.READY
            return
        if isinstance(self.queue, SequenceBatcher):
            self.queue.load_initial_states(self.model_dir)
        spec = ModelSpec(self.name, self.version, self.model_dir, self.config,
                         json.dumps(config_to_json_dict(self.config)), self.server.options,
                         self.server, on_fatal=self.fail)
        self._backend_model = load_backend_model(self.backend, spec)
        try:
            for ispec in instance_specs(self.config):
                self._instances.append(self._backend_model.create_instance(ispec))
                warm_up(self, self._instances[-1], ispec.name)  # before the model is READY
        except BaseException:
            self._finalize_instances()
            raise
        limiter = getattr(self.server, "rate_limiter", None)
        for index, (inst, ispec) in enumerate(zip(self._instances, instance_specs(self.config),
                                                  strict=False)):
            group = _group_of(self.config, ispec)
            grantee = limiter.register(ispec.name, group, ispec.device_id) if limiter else None
            if grantee is not None:
                self._grantees.append(grantee)
            cpus = host_policy_cpus(self.server.options, group, ispec)
            if cpus:
                inst.pin_cpus(cpus)
            t = threading.Thread(target=self._worker, args=(inst, index, grantee, cpus),
                                 daemon=True,
                                 name=f"model-{ispec.name}")
            t.start()
            self._workers.append(t)
        self.state = ModelState.READY

    def fail(self, reason: str) -> None:
        """What serves this version is lost (its engine process died): it turns
        UNAVAILABLE with reason, queued requests fail and its instances are released in
        the background. A load of the model (or a poll that sees a change) replaces it."""
        if self.state != ModelState.READY:
            return
        self.state, self.reason = ModelState.UNAVAILABLE, reason
        log.error("model '%s' version %d is UNAVAILABLE: %s", self.name, self.version, reason)
        threading.Thread(target=self._stop_serving, args=(reason,), daemon=True,
                         name=f"model-{self.name}-failed").start()

    def _stop_serving(self, reason: str) -> None:
        if self.queue is not None:
            for sreq in self.queue.stop():
                sreq.fail(Unavailable(f"model '{self.name}' version {self.version} is "
                                      f"unavailable: {reason}"))
        for t in self._workers:
            t.join(timeout=30)
        self._finalize_instances()

    def _finalize_instances(self) -> None:
        with self._release_lock:
            self._finalize_instances_locked()

    def _finalize_instances_locked(self) -> None:
        for inst in self._instances:
            try:
                inst.finalize()
            except Exception:
                log.exception("finalize of an instance of model '%s' failed", self.name)
        self._instances = []
        if self._backend_model is not None:
            try:
                self._backend_model.unload()
            except Exception:
                log.exception("unload of model '%s' failed", self.name)
            self._backend_model = None

    def ready(self) -> bool:
        if self.state != ModelState.READY:
            return False
        return all(inst.is_ready() for inst in self._instances)

    def inflight(self) -> int:
        with self._idle:
            return self._inflight

    def wait_idle(self, timeout: float | None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def unload(self, drain_timeout: float | None) -> None:
        """Blocking: finish in-flight requests (up to drain_timeout, None: no limit), then
        finalize. Requests still in flight after drain_timeout fail at once, and an
        instance stuck in execute is left behind, so unload (and shutdown, with
        --exit-timeout-secs) takes about drain_timeout, not drain_timeout plus a wait
        per worker thread."""
        self.state = ModelState.UNLOADING
        gone = Unavailable(f"model '{self.name}' version {self.version} was unloaded")
        if not self.wait_idle(drain_timeout):
            log.warning("model '%s' version %d: %d requests still in flight at unload",
                        self.name, self.version, self.inflight())
            with self._idle:
                left = list(self._live.values())
            for sreq in left:
                sreq.fail(gone)
        if self.queue is not None:
            for sreq in self.queue.stop():
                sreq.fail(gone)
        deadline = time.monotonic() + (_WORKER_EXIT_SECS if drain_timeout is None else 1.0)
        for t in self._workers:
            t.join(timeout=max(deadline - time.monotonic(), 0.0))
        stuck = [t.name for t in self._workers if t.is_alive()]
        self._workers = []
        limiter = getattr(self.server, "rate_limiter", None)
        for grantee in self._grantees:
            limiter.unregister(grantee)
        self._grantees = []
        if stuck:
            # finalize must not run beside a live execute; the threads are daemons
            log.warning("model '%s' version %d: %s still executing at unload; not finalized",
                        self.name, self.version, ", ".join(stuck))
        else:
            self._finalize_instances()
        self.state = ModelState.UNAVAILABLE
        self.reason = "unloaded"

    # -- requests -----------------------------------------------------------------------
    def prepare(self, request: InferenceRequest, deliver) -> SchedRequest:
        """Validate a request and wrap it for the scheduler; raises ServerError."""
        if self.sequence_needs_corrid and request.correlation_id in (0, "", None):
            raise InvalidArgument(
                f"inference request to model '{self.name}' must specify a non-zero or non-empty "
                "correlation ID"
            )
        inputs, batch_size = validate_request(self.config, request)
        names = requested_output_names(self.config, request)
        sreq = SchedRequest(request, inputs, batch_size, names, ResponseSink(deliver),
                            model_version=self.version)
        sreq.output_transform = output_transform(self.config, names, bool(request.requested_outputs))
        return sreq

    def submit(self, sreq: SchedRequest) -> None:
        assert self.queue is not None
        if self.state != ModelState.READY:
            raise Unavailable(f"Request for unknown model: '{self.name}' version {self.version} "
                              "is not at ready state")
        refusal = self._backend_model.admission_error(sreq) if self._backend_model else None
        if refusal is not None:  # as a full queue below: answered at once, not counted
            raise refusal
        start = sreq.request.arrival_ns or now_ns()

        def done(resp: InferenceResponse) -> None:
            sreq.request.cancel.clear_callbacks()
            self.stats.request_done(not sreq.sink.failed, now_ns() - start)
            with self._idle:
                self._inflight -= 1
                self._live.pop(id(sreq), None)
                self._idle.notify_all()

        sreq.sink.add_final_callback(done)
        sreq.requeue = self.queue.requeue
        with self._idle:
            self._inflight += 1
            self._live[id(sreq)] = sreq
        withdraw = self.orderer.register(sreq) if self.orderer is not None else None
        if self.cache is not None and self.cache.answer(sreq):
            return  # answered from the response cache
        try:
            self.queue.enqueue(sreq)
        except ServerError:
            if withdraw is not None:
                withdraw()
            with self._idle:
                self._inflight -= 1
                self._live.pop(id(sreq), None)
                self._idle.notify_all()
            raise

    def _worker(self, inst: BackendInstance, index: int, grantee: Grantee | None,
                cpus: set[int] | None) -> None:
        assert self.queue is not None
        if cpus:
            pin_current_thread(cpus, self.name)
        limiter = getattr(self.server, "rate_limiter", None)
        while True:
            # the sequence batcher forms batches per instance (its slots live there)
            seq = isinstance(self.queue, SequenceBatcher)
            batch = self.queue.next_batch(index) if seq else self.queue.next_batch()
            if batch is None:
                return
            if grantee is not None:
                # the batch waits until this instance holds its rate-limiter resources
                while not limiter.acquire(grantee, timeout=0.5):
                    if self.state == ModelState.UNLOADING and self.queue.stopped:
                        for r in batch:
                            r.fail(Unavailable(f"model '{self.name}' version {self.version} "
                                               "was unloaded"))
                        return
            self._run_batch(inst, batch,
                            (lambda: limiter.release(grantee)) if grantee is not None else None)

    def _run_batch(self, inst: BackendInstance, batch: list[SchedRequest],
                   release: Callable[[], None] | None = None) -> None:
        start = now_ns()
        real = [r for r in batch if not r.null_request]  # sequence padding is not counted
        for r in real:
            self.stats.queued(start - r.enqueue_ns)
        size = sum(r.batch_size for r in real)
        try:
            fut = inst.execute(batch)
        except Exception as exc:
            log.exception("model '%s' failed to execute a batch", self.name)
            for r in batch:
                if not r.sink.closed:
                    r.fail(InternalError(f"Failed to process the request(s) for model "
                                         f"'{self.name}', message: {exc}"))
            fut = None
        if fut is None:
            self.stats.executed(size, len(real), 0, now_ns() - start, 0)
            if release is not None:
                release()
        else:
            def done(_f: object) -> None:
                self.stats.executed(size, len(real), 0, now_ns() - start, 0)
                if release is not None:
                    release()

            fut.add_done_callback(done)
