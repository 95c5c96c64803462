"""The tensorrtllm backend: a tensorrt_llm model served by llmserve's LLM executor.

execute() turns each Triton request (one per batch item) into executor Requests; one
dispatcher thread awaits executor responses and answers through the request's sink
(every response when decoupled, the final one otherwise). Client cancellation and the
`stop` input cancel the executor requests; a stats thread feeds the LLM metrics.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.tensorrtllm import request_mapping as rm
from llmserve.backends.tensorrtllm.coalesce import HeldTokens, can_merge
from llmserve.backends.tensorrtllm.metrics import LlmMetrics
from llmserve.backends.tensorrtllm.parameters import BackendSettings, read_settings
from llmserve.backends.tensorrtllm.response_mapping import add_batch_dim, result_tensors
from llmserve.backends.tensorrtllm.text import Utf8HoldBack, incomplete_token_ids, load_tokenizer
from llmserve.core import datatypes
from llmserve.core.errors import (
    Cancelled,
    InternalError,
    InvalidArgument,
    QueueFull,
    ServerError,
    Unavailable,
)
from llmserve.core.types import Tensor

logger = logging.getLogger(__name__)

QUEUE_FULL = "Exceeds maximum queue size"


@dataclass(eq=False)
class _Group:
    """One Triton request: its executor requests and how far they got."""

    sched: Any  # llmserve.scheduling.request.SchedRequest
    remaining: set[int] = field(default_factory=set)
    cancelled: bool = False
    failed: bool = False


@dataclass(eq=False)
class _Item:
    group: _Group
    options: rm.ItemOptions
    streaming: bool
    exclude_input: bool
    pad_id: int
    holdbacks: dict[int, Utf8HoldBack] = field(default_factory=dict)
    generated: dict[int, int] = field(default_factory=dict)
    finals: list = field(default_factory=list)  # non-decoupled: final Results per sequence
    last_token_s: dict[int, float] = field(default_factory=dict)
    arrival_s: float = field(default_factory=time.monotonic)
    wanted: frozenset[str] | None = None  # output names to build, set on the first response
    held: HeldTokens | None = None  # streamed tokens waiting for a reader that is behind
    lock: threading.Lock = field(default_factory=threading.Lock)  # held, sent in order
    mergeable: bool = False  # stream_coalescing on and can_merge(options)


def _parameters(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def _output_dtypes(config) -> dict[str, tuple[str, np.dtype]]:
    out = {}
    for o in config.output:
        dt = datatypes.from_config_name(mc.DataType.Name(o.data_type))
        out[o.name] = (dt.api_name, dt.numpy if dt.numpy is not None else np.dtype(np.float32))
    return out


class TensorRTLLMModel:
    """One loaded tensorrt_llm model version (one instance: the executor owns the device)."""

    def __init__(self, config, model_dir: Path, version: int = 1, metrics_registry=None,
                 on_fatal=None):
        """on_fatal(reason): the engine process, or a tensor-parallel rank, died; the
        model cannot serve any more."""
        self.config = config
        self._on_fatal = on_fatal
        self.name = config.name
        self.decoupled = bool(config.model_transaction_policy.decoupled)
        self.batched = int(config.max_batch_size) > 0
        queue = 0
        if config.HasField("dynamic_batching"):
            queue = int(config.dynamic_batching.default_queue_policy.max_queue_size)
        self.settings: BackendSettings = read_settings(
            _parameters(config), max_queue_size=queue, model_dir=model_dir
        )
        self._dtypes = _output_dtypes(config)
        unused = rm.unused_config_inputs(i.name for i in config.input)
        if unused:
            logger.warning("model '%s': config.pbtxt declares inputs that llmserve's "
                           "tensorrt_llm does not use; requests that send them get no "
                           "effect: %s", self.name, ", ".join(unused))
        self._metrics = (
            LlmMetrics(metrics_registry, self.name, str(version)) if metrics_registry else None
        )
        self._items: dict[int, _Item] = {}
        self._by_triton_id: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.executor = None
        self.tokenizer = None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        from llmserve.backends.hf_imports import prewarm_transformers
        from llmserve.llm import Executor, ModelType

        prewarm_transformers()

        s = self.settings
        if s.engine_process:
            from llmserve.llm.engine_process import EngineProcessExecutor

            self.executor = EngineProcessExecutor(
                s.engine_dir, ModelType.DECODER_ONLY, s.executor_config, name=self.name,
                on_death=self._on_fatal)
        else:
            self.executor = Executor(s.engine_dir, ModelType.DECODER_ONLY, s.executor_config)
            if hasattr(self.executor.runner, "on_failure"):  # tensor parallelism's ranks
                self.executor.runner.on_failure = self._on_fatal
        if s.tokenizer_dir is not None:
            self.tokenizer = load_tokenizer(s.tokenizer_dir)
            incomplete_token_ids(self.tokenizer)  # at load, not on the first stream
        for target, name in ((self._dispatch_loop, "responses"), (self._stats_loop, "stats")):
            t = threading.Thread(target=target, name=f"trtllm-{self.name}-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def unload(self) -> None:
        self._stopping.set()
        with self._lock:
            ids = list(self._items)
        for rid in ids:
            self._cancel_executor_request(rid)
        for t in self._threads:
            t.join(timeout=5)
        if self.executor is not None:
            self.executor.shutdown()
        with self._lock:
            groups = {id(i.group): i.group for i in self._items.values()}.values()
            self._items.clear()
        for g in groups:
            g.sched.fail(Unavailable(f"model '{self.name}' was unloaded"))

    # ------------------------------------------------------------------ requests
    def admission_error(self, sched) -> ServerError | None:
        """Unavailable while the executor's queue is full (a `stop` request still
        passes: it frees room)."""
        if not self._queue_is_full():
            return None
        inputs = {name: t.data for name, t in sched.inputs.items()}
        return None if _stop_flag(inputs) else Unavailable(QUEUE_FULL)

    def _queue_is_full(self) -> bool:
        # an executor in an engine process is asked when a request arrives there
        check = getattr(self.executor, "queue_is_full", None)
        return check is not None and check()

    def execute(self, requests: list) -> None:
        """Enqueue every request; answers arrive later from the dispatcher thread."""
        for sched in requests:
            try:
                self._enqueue(sched)
            except ServerError as e:
                sched.fail(e)
            except (ValueError, TypeError) as e:
                sched.fail(InvalidArgument(str(e)))

    def _enqueue(self, sched) -> None:
        inputs = {name: t.data for name, t in sched.inputs.items()}
        items = rm.split_batch(inputs, self.batched)
        if _stop_flag(inputs):
            self._stop(sched)
            return
        if len(items) > 1 and not self.decoupled:
            raise InvalidArgument(rm.BATCH_NEEDS_DECOUPLED)
        if self._queue_is_full():  # overload: refuse before building the requests
            raise Unavailable(QUEUE_FULL)
        built = []
        for index, item in enumerate(items):
            request, options = rm.build_request(
                item,
                index,
                decoupled=self.decoupled,
                default_exclude_input=self.settings.exclude_input_in_output,
                decoding_mode=self.settings.decoding_mode,
                fast_logits=getattr(self.settings.executor_config.speculative_decoding_config,
                                    "fast_logits", False),
            )
            request.embedding_bias = self._fit_bias(request.embedding_bias)
            if request.guided_decoding_params is not None and not self.settings.guided_decoding:
                raise InvalidArgument(f"model '{self.name}' does not serve guided decoding "
                                      "(its guided_decoding_backend is none)")
            built.append((request, options))
        group = _Group(sched)
        for request, options in built:
            item = _Item(
                group=group,
                options=options,
                streaming=request.streaming,
                exclude_input=request.output_config.exclude_input_from_output,
                pad_id=request.pad_id if request.pad_id is not None else 0,
                # one item per sink: the sink calls back one waiting producer
                mergeable=(self.settings.stream_coalescing and self.decoupled
                           and len(built) == 1 and request.streaming and can_merge(options)),
            )
            # enqueued and recorded under the lock _on_response takes, so no response can
            # be handled before its id is known (TensorRT-LLM's backend does the same);
            # with an engine process the first tokens may come back within microseconds
            with self._lock:
                try:
                    rid = self.executor.enqueue_request(request)
                except ServerError as e:
                    failed = e
                else:
                    failed = None
                    self._items[rid] = item
                    group.remaining.add(rid)
                    if sched.request.id:
                        self._by_triton_id.setdefault(sched.request.id, set()).add(rid)
            if failed is not None:
                self._abort_group(group)
                if isinstance(failed, QueueFull):
                    raise Unavailable(QUEUE_FULL) from None
                raise failed
        sched.request.cancel.add_callback(lambda: self._cancel_group(group))

    def _fit_bias(self, bias):
        """Pad a tokenizer-sized bias to the model's vocab (extra ids get no bias)."""
        vocab = getattr(self.executor, "vocab_size", None)
        if bias is None or vocab is None or bias.numel() >= vocab:
            return bias
        import torch

        return torch.cat([bias, torch.zeros(vocab - bias.numel(), dtype=bias.dtype)])

    def _stop(self, sched) -> None:
        """`stop`=true: end the requests that carry the same request id."""
        with self._lock:
            ids = set(self._by_triton_id.get(sched.request.id, ()))
        for rid in ids:
            self._cancel_executor_request(rid)
        sched.respond([], final=True)

    def _cancel_executor_request(self, rid: int) -> None:
        try:
            self.executor.cancel_request(rid)
        except ServerError as e:  # already finished
            logger.debug("cancel of request %d: %s", rid, e)

    def _cancel_group(self, group: _Group) -> None:
        with self._lock:
            group.cancelled = True
            ids = list(group.remaining)
        for rid in ids:
            self._cancel_executor_request(rid)

    def _abort_group(self, group: _Group) -> None:
        self._cancel_group(group)
        with self._lock:
            for rid in list(group.remaining):  # _forget discards from the set
                self._forget(rid)

    def _forget(self, rid: int) -> None:
        item = self._items.pop(rid, None)
        if item is None:
            return
        item.group.remaining.discard(rid)
        tid = item.group.sched.request.id
        ids = self._by_triton_id.get(tid)
        if ids is not None:
            ids.discard(rid)
            if not ids:
                del self._by_triton_id[tid]

    # ------------------------------------------------------------------ responses
    def _dispatch_loop(self) -> None:
        period_ms = max(self.settings.cancellation_check_period_ms, 1)
        timeout = datetime.timedelta(milliseconds=period_ms)
        while not self._stopping.is_set():
            try:
                responses = self.executor.await_responses(None, timeout)
            except ServerError as e:
                if self._stopping.is_set():
                    return
                logger.error("tensorrt_llm '%s': awaiting responses failed: %s", self.name, e)
                continue
            for response in responses:
                with self._lock:
                    item = self._items.get(response.request_id)
                try:
                    self._on_response(response)
                except Exception as exc:  # one bad response must not stop the dispatcher,
                    # nor leave its request waiting for a final response that never comes
                    logger.exception("tensorrt_llm '%s': response handling failed", self.name)
                    if item is not None:
                        self._fail_group(item.group, InternalError(
                            f"tensorrt_llm '{self.name}': response handling failed: {exc}"))
            self._poll_cancellations()

    def _poll_cancellations(self) -> None:
        with self._lock:
            groups = {id(i.group): i.group for i in self._items.values()}.values()
            pending = [g for g in groups if not g.cancelled and g.sched.is_cancelled()]
        for g in pending:
            self._cancel_group(g)

    def _on_response(self, response) -> None:
        with self._lock:
            item = self._items.get(response.request_id)
        if item is None:
            return
        group = item.group
        if response.has_error():
            self._fail_group(group, InternalError(response.error_msg or "executor error"))
            return
        result = response.result
        if result.is_final:
            with self._lock:
                self._forget(response.request_id)
                last = not group.remaining
        else:
            last = False
        if group.failed:
            return
        if group.cancelled:
            if last:
                group.sched.fail(Cancelled("Request was cancelled"))
            return
        if self.decoupled:
            self._send_stream(item, result, last)
        else:
            self._send_final(item, result, last)

    def _fail_group(self, group: _Group, error: ServerError) -> None:
        with self._lock:
            already = group.failed
            group.failed = True
            ids = list(group.remaining)
        for rid in ids:
            self._cancel_executor_request(rid)
        with self._lock:
            for rid in ids:
                self._forget(rid)
        if not already:
            group.sched.fail(error)

    def _released_tokens(self, item: _Item, result) -> list[list[int]]:
        beams = result.output_token_ids
        opts = item.options
        use_holdback = (
            item.streaming
            and self.tokenizer is not None
            and len(beams) == 1
            and opts.beam_width == 1
            and not (opts.return_log_probs or opts.return_generation_logits)
        )
        if not use_holdback:
            return beams
        hb = item.holdbacks.setdefault(result.sequence_index, Utf8HoldBack(self.tokenizer))
        return [hb.push(beams[0], final=result.is_sequence_final or result.is_final)]

    def _count_tokens(self, item: _Item, result) -> int:
        """Update the sequence's generated count and the latency metrics; new tokens."""
        seq = result.sequence_index
        n = max((len(b) for b in result.output_token_ids), default=0)
        if not item.streaming:
            n = n if item.exclude_input else max(n - item.options.num_input_tokens, 0)
        if not item.streaming or item.options.beam_width > 1:
            # whole sequences (beam search streams every beam in full each time)
            n = max(n - item.generated.get(seq, 0), 0)
        item.generated[seq] = item.generated.get(seq, 0) + n
        if self._metrics is not None and n > 0:
            now = time.monotonic()
            self._metrics.observe_tokens(n)
            last = item.last_token_s.get(seq)
            if last is None:
                self._metrics.observe_first_token(now - item.arrival_s)
            elif item.streaming:
                self._metrics.observe_inter_token((now - last) / n)
            item.last_token_s[seq] = now
        return n

    def _tensors(self, item: _Item, result, output_ids=None,
                 num_output_tokens: int | None = None) -> list[Tensor]:
        if item.wanted is None:  # the config's outputs the request asked for (all when none)
            asked = getattr(item.group.sched, "output_names", None)
            item.wanted = frozenset(n for n in self._dtypes if not asked or n in asked)
        if num_output_tokens is None:
            num_output_tokens = item.generated.get(result.sequence_index, 0)
        raw = result_tensors(
            result,
            item.options,
            wanted=item.wanted,
            output_ids=output_ids,
            pad_id=item.pad_id,
            num_output_tokens=num_output_tokens,
        )
        if self.batched:
            raw = add_batch_dim(raw)
        out = []
        for name, value in raw.items():
            api, dtype = self._dtypes[name]
            out.append(Tensor(name, api, np.ascontiguousarray(value, dtype=dtype)))
        return out

    def _send_stream(self, item: _Item, result, last: bool) -> None:
        self._count_tokens(item, result)
        released = self._released_tokens(item, result)
        final = result.is_final and last
        if not final and item.streaming and not any(released) and not result.is_sequence_final:
            return  # everything held back: nothing to say yet
        if not item.mergeable:
            item.group.sched.respond(self._tensors(item, result, released), final=final)
            return
        with item.lock:  # the reader's thread may be flushing what is held
            held = item.held
            if held is not None and held.sequence_index != result.sequence_index:
                self._send_held(item)  # another sequence's tokens go first
                held = None
            ends = result.is_final or result.is_sequence_final
            hold = not ends and item.group.sched.sink.behind(lambda: self._flush_held(item))
            if held is None and not hold:  # the reader keeps up: nothing to merge
                item.group.sched.respond(self._tensors(item, result, released), final=final)
                return
            count = item.generated.get(result.sequence_index, 0)
            if held is None:
                item.held = HeldTokens(result, released, count)
            else:
                held.add(result, released, count)
            if not hold:
                self._send_held(item, final=final)

    def _send_held(self, item: _Item, final: bool = False) -> None:
        """Sends what is held (under item.lock)."""
        held, item.held = item.held, None
        if held is not None:
            item.group.sched.respond(self._tensors(item, held.merged(), held.ids,
                                                   held.num_output_tokens), final=final)

    def _flush_held(self, item: _Item) -> None:
        """The reader caught up (called on its thread): what was held leaves now."""
        try:
            with item.lock:
                if not (item.group.failed or item.group.cancelled):
                    self._send_held(item)
        except Exception as exc:  # not the reader's fault: the request fails, not the reader
            logger.exception("tensorrt_llm '%s': response handling failed", self.name)
            self._fail_group(item.group, InternalError(
                f"tensorrt_llm '{self.name}': response handling failed: {exc}"))

    def _send_final(self, item: _Item, result, last: bool) -> None:
        self._count_tokens(item, result)
        if result.is_sequence_final or result.is_final:
            item.finals.append(result)
        if not result.is_final:
            return
        merged = _merge_sequences(sorted(item.finals, key=lambda r: r.sequence_index))
        item.group.sched.respond(self._tensors(item, merged), final=last)

    # ------------------------------------------------------------------ stats
    def _stats_loop(self) -> None:
        period = max(self.settings.stats_check_period_ms, 1) / 1000.0
        while not self._stopping.wait(period):
            if self._metrics is None:
                continue
            try:
                stats = self.executor.get_latest_iteration_stats()
                current = getattr(self.executor, "get_current_stats", None)
                if stats:
                    self._metrics.update_from_stats(stats[-1])
                elif current is not None:  # no step since the last look: what is held now
                    self._metrics.update_held(current())
            except ServerError:
                continue


def _stop_flag(inputs: dict[str, np.ndarray]) -> bool:
    value = inputs.get("stop")
    return value is not None and np.asarray(value).size > 0 and bool(np.asarray(value).any())


def _merge_sequences(results: list):
    """Non-decoupled num_return_sequences > 1: all sequences as beams of one response."""
    if len(results) == 1:
        return results[0]
    from dataclasses import replace

    first = results[0]
    return replace(
        first,
        output_token_ids=[b for r in results for b in r.output_token_ids],
        finish_reasons=[f for r in results for f in r.finish_reasons],
        cum_log_probs=[c for r in results for c in (r.cum_log_probs or [])] or None,
        log_probs=[lp for r in results for lp in (r.log_probs or [])] or None,
        is_final=True,
        sequence_index=0,
    )
