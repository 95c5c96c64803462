"""The ensemble scheduler: runs the steps of `ensemble_scheduling` as soon as their input
tensors exist, maps tensors with input_map/output_map, streams decoupled steps through
(each upstream response flows on in its own branch and yields one ensemble response), and
fails the request naming the step on any step error.

As in Triton, an output that a step's response leaves out is known to be absent: a later
step that maps it runs without that input (it must be optional there), and the ensemble's
response omits it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import InternalError, ServerError
from llmserve.core.types import (
    CancellationToken,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    Tensor,
)
from llmserve.scheduling.step_limiter import StepLimiter


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One step of ensemble_scheduling as plain Python: the protobuf maps cost a
    container and a lookup per access, and the dataflow reads them for every streamed
    response of every request. Built once per model version (ensemble_steps)."""

    model_name: str
    model_version: int
    inputs: dict[str, str]  # model input -> ensemble tensor
    outputs: dict[str, str]  # model output -> ensemble tensor
    reads: tuple[str, ...]  # the ensemble tensors it takes

    @classmethod
    def of(cls, step: mc.ModelEnsembling.Step) -> EnsembleStep:
        inputs = dict(step.input_map)
        return cls(step.model_name, int(step.model_version), inputs, dict(step.output_map),
                   tuple(inputs.values()))


def ensemble_steps(config: mc.ModelConfig) -> list[EnsembleStep]:
    return [EnsembleStep.of(s) for s in config.ensemble_scheduling.step]


class _Branch:
    """Tensors known along one path of responses; a decoupled step forks a branch per response.

    Branches emit in depth-first creation order, so that a stream's responses leave the
    ensemble in the order its decoupled step produced them even when a later step (say
    postprocessing with several instances) finishes them out of order."""

    def __init__(self, tensors: dict[str, Tensor], parent: _Branch | None = None):
        self.own: dict[str, Tensor | None] = dict(tensors)  # None: known to be absent
        self.parent = parent
        self.children: list[_Branch] = []
        self.started: set[int] = set()
        self.emitted = False
        self.running = 0  # step tasks in flight on this branch
        self.pending: list[Tensor] | None = None  # outputs waiting for earlier branches
        self.consumed = False  # its response reached the ensemble's reader
        self.prev = parent.children[-1] if parent is not None and parent.children else None

    def get(self, name: str) -> Tensor | None:
        b: _Branch | None = self
        while b is not None:
            if name in b.own:
                return b.own[name]
            b = b.parent
        return None

    def known(self, name: str) -> bool:
        """The tensor was produced, or a step answered without producing it (absent)."""
        b: _Branch | None = self
        while b is not None:
            if name in b.own:
                return True
            b = b.parent
        return False

    def has_started(self, step: int) -> bool:
        b: _Branch | None = self
        while b is not None:
            if step in b.started:
                return True
            b = b.parent
        return False

    def release(self) -> None:
        """The run is over: unlink this subtree's children, so that its branches (one
        per streamed response, each with its tensors) are freed now by reference
        counting instead of waiting, as reference cycles, for the garbage collector."""
        stack = [self]
        while stack:
            b = stack.pop()
            stack.extend(b.children)
            b.children = []

    def subtree(self) -> list[_Branch]:
        out = [self]
        for c in self.children:
            out.extend(c.subtree())
        return out

    def predecessor(self) -> _Branch | None:
        """The branch whose whole subtree must be out before this one emits."""
        b: _Branch | None = self
        while b is not None:
            if b.prev is not None:
                return b.prev
            b = b.parent
        return None

    def quiet(self) -> bool:
        """Every step of this subtree finished, and what it emitted was read."""
        return all(b.running == 0 and b.pending is None and (b.consumed or not b.emitted)
                   for b in self.subtree())

    def settled(self) -> bool:
        """Nothing more will be emitted from this subtree."""
        if self.pending is not None or (self.running and not self.emitted):
            return False
        if self.running and not self.children:
            return False
        return self.running == 0 and all(c.settled() for c in self.children)


class EnsembleRun:
    def __init__(self, server: Any, config: mc.ModelConfig, version: int, request: InferenceRequest,
                 inputs: dict[str, Tensor], output_names: list[str],
                 limiters: list[StepLimiter] | None = None,
                 steps: list[EnsembleStep] | None = None):
        self.server = server
        self.limiters = limiters  # max_inflight_requests: one per step, shared
        self.config = config
        self.version = version
        self.request = request
        self.steps = ensemble_steps(config) if steps is None else steps
        self.output_names = output_names
        self.root = _Branch(inputs)
        # optional ensemble inputs the client left out: steps run without them (Triton)
        self.absent = {i.name for i in config.input if i.optional and i.name not in inputs}
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tasks: set[asyncio.Task] = set()
        self.waiting: list[_Branch] = []  # ready to emit, in creation order
        self.pacing: list[tuple[_Branch, asyncio.Event]] = []  # decoupled steps, paced
        self.failed = False
        self.step_decoupled = [self._step_decoupled(s) for s in self.steps]  # once per request
        self.streaming = any(self.step_decoupled)
        # a step is asked only for the outputs a later step reads or the client wants:
        # the rest would be built, sent and dropped once per streamed token
        needed = set(output_names).union(*(s.reads for s in self.steps))
        self.step_outputs = [[RequestedOutput(n) for n, t in s.outputs.items() if t in needed]
                             or [RequestedOutput(n) for n in s.outputs] for s in self.steps]

    def _step_decoupled(self, step: EnsembleStep) -> bool:
        try:
            return bool(self.server.is_decoupled(step.model_name, _version(step.model_version)))
        except ServerError:
            return False

    # -- dataflow -----------------------------------------------------------------------
    def _trigger(self, branch: _Branch) -> None:
        for b in branch.subtree():
            for i, step in enumerate(self.steps):
                if b.has_started(i):
                    continue
                if all(b.known(t) or t in self.absent for t in step.reads):
                    b.started.add(i)
                    b.running += 1
                    task = asyncio.create_task(self._run_step(b, i))
                    self.tasks.add(task)
                    task.add_done_callback(self._task_done)
            self._maybe_emit(b)

    def _maybe_emit(self, b: _Branch) -> None:
        if b.emitted or b.pending is not None or self.failed:
            return
        if not all(b.known(n) for n in self.output_names):
            return
        tensors = [b.get(n) for n in self.output_names]
        b.pending = [Tensor(n, t.datatype, t.data)
                     for n, t in zip(self.output_names, tensors, strict=False) if t is not None]
        self.waiting.append(b)
        self._flush()

    def _flush(self) -> None:
        """Emits every waiting branch whose predecessors are all out, in order."""
        progressed = True
        while progressed and self.waiting and not self.failed:
            progressed = False
            for b in list(self.waiting):
                pred = b.predecessor()
                if pred is not None and not pred.settled():
                    continue
                self.waiting.remove(b)
                outs, b.pending, b.emitted = b.pending, None, True
                self.queue.put_nowait((b, InferenceResponse(self.config.name, self.version,
                                                            self.request.id, outs, final=False)))
                progressed = True

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self.queue.put_nowait(None)

    async def _run_step(self, branch: _Branch, index: int) -> None:
        step = self.steps[index]
        inputs = {}
        for model_input, tensor_name in step.inputs.items():
            t = branch.get(tensor_name)
            if t is None:  # an optional ensemble input the client did not send, or a
                continue   # tensor an earlier step left out
            inputs[model_input] = Tensor(model_input, t.datatype, t.data)
        token = CancellationToken()
        self.request.cancel.add_callback(token.cancel)
        sub = InferenceRequest(
            model_name=step.model_name,
            inputs=inputs,
            model_version=step.model_version,
            id=self.request.id,
            requested_outputs=self.step_outputs[index],
            parameters=dict(self.request.parameters),
            correlation_id=self.request.correlation_id,
            flags=self.request.flags,
            priority=self.request.priority,
            timeout_us=self.request.timeout_us,
            cancel=token,
        )
        decoupled = self.step_decoupled[index]
        limiter = self.limiters[index] if self.limiters else None
        acquired = False
        try:
            if limiter is not None:
                await self._acquire(limiter, index)
                acquired = True
            async for resp in self.server.infer_internal(sub):
                if resp.error is not None:
                    # failed here, not raised: the traceback raising would put on the
                    # response's error ties this frame (and the run) into a cycle
                    self._fail(self._step_error(step, resp.error))
                    return
                outputs = step.outputs
                produced: dict[str, Tensor | None] = {
                    outputs[t.name]: t for t in resp.outputs if t.name in outputs}
                if not produced:  # a flag-only response (e.g. a decoupled model's final)
                    continue
                for tensor_name in outputs.values():
                    produced.setdefault(tensor_name, None)
                if decoupled:
                    child = _Branch(produced, branch)
                    branch.children.append(child)
                    self._trigger(child)
                    await self._paced(child)
                else:
                    branch.own.update(produced)
                    self._trigger(branch)
        except ServerError as exc:
            self._fail(self._step_error(step, exc))
        except asyncio.CancelledError:
            token.cancel()
            raise
        except Exception as exc:
            self._fail(InternalError(f"in ensemble '{self.config.name}', step '{step.model_name}': {exc}"))
        finally:
            if acquired:
                limiter.release()
            self.request.cancel.remove_callback(token.cancel)  # one step per streamed token
            branch.running -= 1
            self._flush()
            self._wake()

    def _step_error(self, step: EnsembleStep, exc: ServerError) -> ServerError:
        return ServerError(f"in ensemble '{self.config.name}', step '{step.model_name}': "
                           f"{exc.message}", exc.code)

    async def _acquire(self, limiter: StepLimiter, index: int) -> None:
        """A slot at this step (max_inflight_requests); a cancelled request stops waiting."""
        loop = asyncio.get_running_loop()

        def poke() -> None:
            loop.call_soon_threadsafe(limiter.poke)

        self.request.cancel.add_callback(poke)
        try:
            await limiter.acquire(self.request.cancel.is_cancelled, self.config.name, index)
        finally:
            self.request.cancel.remove_callback(poke)

    async def _paced(self, child: _Branch) -> None:
        """A decoupled step's next response waits until this one has gone through the
        later steps and its ensemble response was read. Meanwhile the upstream model
        holds its new tokens (the tensorrt_llm backend merges a stream's tokens while its
        reader is behind), so a slow pipeline carries several tokens per response rather
        than queueing one per token; a pipeline that keeps up waits for nothing."""
        if child.quiet():
            return
        event = asyncio.Event()
        self.pacing.append((child, event))
        await event.wait()

    def _wake(self) -> None:
        if not self.pacing:
            return
        still = []
        for child, event in self.pacing:
            if child.quiet():
                event.set()
            else:
                still.append((child, event))
        self.pacing = still

    def _fail(self, error: ServerError) -> None:
        if self.failed:
            return
        self.failed = True
        self.queue.put_nowait(error)
        for t in list(self.tasks):
            t.cancel()

    # -- responses ----------------------------------------------------------------------
    async def responses(self) -> AsyncIterator[InferenceResponse]:
        self._trigger(self.root)
        if not self.tasks:
            self.queue.put_nowait(None)
        held: InferenceResponse | None = None
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, ServerError):
                    yield self._final(error=item)
                    return
                if item is None:
                    break
                branch, item = item
                if self.streaming:
                    yield item
                else:
                    held = item
                branch.consumed = True  # the reader is back for the next one
                self._wake()
            if self.streaming:
                yield self._final()
            elif held is not None:
                held.final = True
                yield held
            else:
                missing = [n for n in self.output_names if not self.root.known(n)]
                yield self._final(error=InternalError(
                    f"ensemble '{self.config.name}' completed without producing output(s) {missing}"))
        finally:
            for t in list(self.tasks):
                t.cancel()
            self.root.release()

    def _final(self, error: ServerError | None = None) -> InferenceResponse:
        return InferenceResponse(self.config.name, self.version, self.request.id, [], error=error,
                                 final=True)


def _version(v: int) -> str:
    return "" if int(v) <= 0 else str(v)
