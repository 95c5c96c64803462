"""The Executor: TensorRT-LLM's executor API over our PyTorch engine.

Requests are validated and queued by the caller's thread; one loop thread admits them,
steps the engine (Stepper) and retires them; responses come back through a
ResponseRouter (await_responses, callbacks, or asyncio queues via subscribe()).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import deque
from pathlib import Path

from llmserve.core.errors import QueueFull, ServerError, Unavailable, Unsupported
from llmserve.llm.attention_window import layer_windows, widest_window
from llmserve.llm.beam_search import BeamSearch
from llmserve.llm.block_manager import BlockManager
from llmserve.llm.config import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_NUM_TOKENS,
    ExecutorConfig,
    ModelType,
    SpeculativeDecodingMode,
)
from llmserve.llm.draft_model import draft_model_proposer
from llmserve.llm.engine_thread import EngineWorker
from llmserve.llm.guided import GuideCompiler
from llmserve.llm.host_tier import HostTier
from llmserve.llm.kv_events import make_publisher
from llmserve.llm.lora_cache import LoraCache, lora_cache_for
from llmserve.llm.outputs import build_response, error_response
from llmserve.llm.request import FinishReason, Request
from llmserve.llm.request_checks import RequestChecks
from llmserve.llm.responses import ResponseRouter, RoutedResponses
from llmserve.llm.responses import timeout_seconds as _seconds
from llmserve.llm.sampling import make_generator
from llmserve.llm.scheduler import Scheduler
from llmserve.llm.sequence import RequestState, SequenceStatus
from llmserve.llm.speculative import PromptLookupProposer, check_draft_logits
from llmserve.llm.stats import IterationStats, KvCacheStats, RequestStatsPerIteration
from llmserve.llm.stepper import Stepper

logger = logging.getLogger(__name__)

class Executor(RequestChecks, RoutedResponses):
    def __init__(self, model_path: str | Path | None,
                 model_type: ModelType = ModelType.DECODER_ONLY,
                 executor_config: ExecutorConfig | None = None, *, runner=None) -> None:
        """runner: an already built engine obeying the ModelRunner contract (tests)."""
        config = executor_config or ExecutorConfig()
        config.validate()
        if model_type is not ModelType.DECODER_ONLY:
            raise Unsupported(f"model type {model_type.name} is not supported; "
                              "only DECODER_ONLY models are")
        self.config = config
        # every step runs on the process's engine thread, shared by every executor (see
        # engine_thread.py for why); the load runs beside it, so serving goes on
        self._engine = EngineWorker.shared()
        self._cond = self._engine.cond
        self._thread = self._engine.thread
        self._stopped = threading.Event()
        self._engine.load(lambda: self._build(model_path, runner))
        self._engine.register(self)

    def _build(self, model_path: str | Path | None, runner) -> None:
        config = self.config
        if runner is None:
            from llmserve.llm.engine.tp_runner import make_runner

            runner = make_runner(model_path, config)
        self.runner = runner
        arch = runner.arch
        self.vocab_size = arch.vocab_size
        self.max_seq_len = config.max_seq_len or arch.max_position_embeddings
        self.max_batch_size = config.max_batch_size or DEFAULT_MAX_BATCH_SIZE
        self.max_num_tokens = config.max_num_tokens or DEFAULT_MAX_NUM_TOKENS
        self.tokens_per_block = config.tokens_per_block
        num_blocks = self._kv_cache_blocks(str(arch.device))
        runner.allocate_kv_cache(num_blocks, self.tokens_per_block)
        # after the KV cache: the device level takes a fraction of what is left
        self.lora_cache: LoraCache = lora_cache_for(runner, config.lora_config)
        self.block_manager = BlockManager(num_blocks, self.tokens_per_block,
                                          config.kv_cache_config.enable_block_reuse)
        self._set_attention_windows()
        self._attach_host_tier()
        self.kv_events = make_publisher(config.kv_events_config)
        if self.kv_events is not None:
            if not config.kv_cache_config.enable_block_reuse:
                logger.warning("KV cache events are on but block reuse is off: no block is "
                               "ever cached, so no event is published")
            self.block_manager.events = []
        self.scheduler = Scheduler(self.block_manager, config.effective_policy,
                                   self.max_batch_size, self.max_num_tokens,
                                   config.enable_chunked_context)
        self._warn_ineffective(config)
        self._warned: set[str] = set()
        self._guides = GuideCompiler(config.guided_decoding_config, model_path, self.vocab_size)
        if config.guided_decoding_config is not None:
            try:
                self._guides.warm_up()
            except ServerError as exc:  # unguided requests still work; guided ones say why
                logger.warning("guided decoding is unavailable: %s", exc.message)
        self._compiling: dict[int, RequestState] = {}  # waiting for their guide's grammar
        self._cancelled_compiling: set[int] = set()

        self._intake: list[RequestState] = []
        self._taken: list[RequestState] = []  # intake being handed to the stepper
        self._cancels: list[int] = []
        self._next_id = 1
        self._num_queued = 0
        self._accepting = True
        self._stop = False
        self._drain = False
        self._drain_deadline: float | None = None
        self._router = ResponseRouter()
        self._stats_lock = threading.Lock()
        self._iter_stats: deque[IterationStats] = deque(
            maxlen=max(1, config.iter_stats_max_iterations))
        self._req_stats: deque[RequestStatsPerIteration] = deque(
            maxlen=max(1, config.request_stats_max_iterations))
        spec = config.speculative_decoding_config
        proposer = None
        if spec is not None and spec.mode is SpeculativeDecodingMode.PROMPT_LOOKUP:
            proposer = PromptLookupProposer(spec.prompt_lookup)
        elif spec is not None and spec.mode is SpeculativeDecodingMode.DRAFT_MODEL:
            proposer = draft_model_proposer(
                spec.draft_model_path, spec.num_draft_tokens, self.vocab_size,
                self.max_batch_size, num_blocks * self.tokens_per_block,
                str(arch.device), config.dtype)
        self._stepper = Stepper(runner, self.scheduler, self._dequeued, proposer)

    def _close_runner(self) -> None:
        close = getattr(self.runner, "close", None)  # tensor parallelism's worker ranks
        if close is not None:
            close()

    # -- KV cache sizing ----------------------------------------------------------------

    def _kv_cache_blocks(self, device: str) -> int:
        kv = self.config.kv_cache_config
        bs = self.tokens_per_block
        per_block = self.runner.kv_cache_bytes_per_block(bs)
        per_seq = -(-self.max_seq_len // bs)
        limits = []
        if kv.max_tokens is not None:
            limits.append(-(-kv.max_tokens // bs))
        fraction = kv.free_gpu_memory_fraction if kv.free_gpu_memory_fraction else 0.9
        if kv.max_tokens is None or kv.free_gpu_memory_fraction is not None:
            limits.append(int(self.runner.available_memory_bytes() * fraction) // per_block)
        if not device.startswith("cuda"):
            # host RAM is shared with everything else: never more than a full batch of
            # max-length sequences can use
            limits.append(self.max_batch_size * per_seq)
        num_blocks = max(1, min(limits))
        if num_blocks < per_seq:
            logger.warning("KV cache holds %d tokens, less than max_seq_len %d",
                           num_blocks * bs, self.max_seq_len)
        logger.info("KV cache: %d blocks of %d tokens (%.1f MiB)", num_blocks, bs,
                    num_blocks * per_block / 2**20)
        return num_blocks

    def _set_attention_windows(self) -> None:
        """KvCacheConfig's windows and sink tokens on top of the checkpoint's windows;
        blocks that fall out of every layer's window are freed as sequences grow."""
        kv = self.config.kv_cache_config
        windows, sink = layer_windows(kv, list(self.runner.arch.layer_windows),
                                      self.max_seq_len)
        self.runner.set_attention_windows(windows, sink)
        widest = widest_window(windows)
        self.block_manager.set_attention_window(widest, sink if widest else 0)
        if widest is not None:
            logger.info("attention window of at most %d tokens (%d sink tokens): blocks "
                        "outside it are freed", widest, sink)

    def _attach_host_tier(self) -> None:
        """KvCacheConfig.host_cache_size bytes of host memory for reusable blocks evicted
        from the device cache (TensorRT-LLM's KV cache offloading)."""
        kv = self.config.kv_cache_config
        if not kv.host_cache_size:
            return
        if not kv.enable_block_reuse:
            logger.warning("ExecutorConfig: kv_cache_config.host_cache_size has no effect "
                           "without enable_block_reuse (only reusable blocks are offloaded)")
            return
        per_block = self.runner.kv_cache_bytes_per_block(self.tokens_per_block)
        slots = int(kv.host_cache_size) // per_block
        if slots < 1:
            logger.warning("kv_cache_config.host_cache_size %d is less than one KV block "
                           "(%d bytes): no host tier", kv.host_cache_size, per_block)
            return
        self.runner.allocate_host_kv_cache(slots)
        self.block_manager.host = HostTier(slots, self.runner.offload_block,
                                           self.runner.onboard_block)
        logger.info("KV cache host tier: %d blocks (%.1f MiB)", slots,
                    slots * per_block / 2**20)

    def _warn_ineffective(self, config: ExecutorConfig) -> None:
        ignored = {
            "speculative_decoding_config.fast_logits (draft logits travel with the request)":
                config.speculative_decoding_config is not None
                and config.speculative_decoding_config.fast_logits,
        }
        for name, set_ in ignored.items():
            if set_:
                logger.warning("ExecutorConfig: %s is accepted but has no effect", name)

    # -- enqueue --------------------------------------------------------------------------

    def can_enqueue_requests(self) -> bool:
        with self._cond:
            return self._accepting

    def queue_is_full(self) -> bool:
        """True while max_queue_size requests wait: enqueue_request would refuse."""
        limit = self.config.max_queue_size
        return limit is not None and limit > 0 and self._num_queued >= limit

    def enqueue_request(self, request: Request) -> int:
        """Queue request and return its id; raises InvalidArgument for a bad request,
        Unavailable when the queue is full or the executor is shut down."""
        if self.queue_is_full():  # refuse before the costly validation (checked again below)
            self._refuse_full()
        params, stop, num_seqs, tuning = self._validate(request)
        guide = None
        if request.guided_decoding_params is not None:
            guide = self._guides.prepare(request.guided_decoding_params)
        with self._cond:
            self._check_accepting()
            if self.queue_is_full():
                self._refuse_full()
            request_id = self._next_id
            self._next_id += 1
            self._num_queued += 1  # hold the queue slot
        # the router is never called with self._cond held: a response callback may call
        # back into the executor (cancel_request) while the loop thread delivers
        state = RequestState(request_id, request, params, stop, num_seqs)
        if tuning is not None:
            state.prompt_table = tuning.embedding_table  # on the engine's device
        if request.sampling_config.beam_width > 1:
            state.beam = BeamSearch.for_request(state)
        if request.lora_config is not None:
            try:  # pinned until the request's final response (see _flush)
                self.lora_cache.acquire(request_id, request.lora_config)
            except ServerError:
                self._dequeued(1)
                raise
        self._router.register(request_id)
        seq0 = state.seqs[0]
        seq0.generator = make_generator(params.seed, 0)
        draft = request.external_draft_tokens_config
        if draft is not None and draft.tokens and num_seqs == 1:
            seq0.draft_tokens = [int(t) for t in draft.tokens]
            seq0.draft_logits = check_draft_logits(draft.logits, len(draft.tokens),
                                                   self.vocab_size)
        if guide is not None:
            # admitted once its grammar is compiled (off this thread and the engine's)
            with self._cond:
                self._compiling[request_id] = state
            guide.add_done_callback(lambda future: self._guide_ready(state, future))
            return request_id
        with self._cond:
            if not self._accepting:
                self._num_queued -= 1
                self._check_accepting()
            self._intake.append(state)
            self._cond.notify_all()
        return request_id

    def _refuse_full(self) -> None:
        raise QueueFull(f"Maximum queue size of {self.config.max_queue_size} has been "
                        "reached, please try again later")

    def _guide_ready(self, state: RequestState, future) -> None:
        """The grammar of a guided request is compiled (or failed): give its sequence a
        matcher and hand it to the engine, or answer it now."""
        rid = state.request_id
        failure = None
        with self._cond:
            self._compiling.pop(rid, None)
            cancelled = rid in self._cancelled_compiling
            self._cancelled_compiling.discard(rid)
            if not self._accepting:
                failure = "Executor is shut down and does not accept requests"
        if failure is None and not cancelled:
            if future.cancelled():
                failure = "guided decoding: compilation was cancelled"
            elif future.exception() is not None:
                failure = f"guided decoding: cannot compile the guide: {future.exception()}"
        if failure is None and not cancelled:
            end = min(state.stop.end_ids) if state.stop.end_ids else None
            try:
                state.seqs[0].guide = self._guides.matcher(future.result(), end,
                                                           state.stop.max_tokens)
            except Exception as exc:  # noqa: BLE001 - answered as this request's error
                failure = f"guided decoding: {exc}"
            with self._cond:
                if failure is None and self._accepting:
                    self._intake.append(state)
                    self._cond.notify_all()
                    return
            failure = failure or "Executor is shut down and does not accept requests"
        self._dequeued(1)
        self.lora_cache.release(rid)
        if cancelled:
            seq = state.seqs[0]
            seq.finish_reason, seq.status = FinishReason.CANCELLED, SequenceStatus.FINISHED
            self._router.deliver(build_response(state, seq, is_final=True))
        else:
            self._router.deliver(error_response(state, failure))

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise Unavailable("Executor is shut down and does not accept requests")

    def enqueue_requests(self, requests: list[Request]) -> list[int]:
        return [self.enqueue_request(r) for r in requests]

    # -- control --------------------------------------------------------------------------

    def cancel_request(self, id: int) -> None:  # noqa: A002
        """Stop the request at the next step; it gets a final CANCELLED response."""
        with self._cond:
            if id in self._compiling:
                self._cancelled_compiling.add(id)
            self._cancels.append(id)
            self._cond.notify_all()

    def get_latest_iteration_stats(self) -> list[IterationStats]:
        with self._stats_lock:
            out = list(self._iter_stats)
            self._iter_stats.clear()
        return out

    def get_latest_request_stats(self) -> list[RequestStatsPerIteration]:
        with self._stats_lock:
            out = list(self._req_stats)
            self._req_stats.clear()
        return out

    def get_kv_cache_stats(self) -> KvCacheStats:
        """A snapshot of the block pool (read without stopping the loop)."""
        bm = self.block_manager
        return KvCacheStats(max_num_blocks=bm.num_blocks, free_num_blocks=bm.num_free_blocks,
                            used_num_blocks=bm.num_used_blocks, tokens_per_block=bm.block_size,
                            cached_num_blocks=bm.num_cached_blocks)

    def get_current_stats(self) -> IterationStats:
        """What the executor holds now (requests, KV blocks), read between steps without
        stopping the loop: iteration stats only come from steps, so after the last
        requests are cancelled they would show the old load for as long as it idles."""
        with self._cond:
            waiting = self._num_queued - len(self._intake) - len(self._taken)
        stepper = self._stepper
        live = len(stepper.states)
        return IterationStats(
            timestamp=datetime.datetime.now().strftime("%m-%d-%Y %H:%M:%S.%f"),
            iter=stepper.iteration,
            num_active_requests=max(live - max(waiting, 0), 0),
            num_queued_requests=max(self._num_queued, 0),
            num_completed_requests=stepper.num_completed,
            max_num_active_requests=self.scheduler.max_batch_size,
            kv_cache_stats=self.get_kv_cache_stats(),
        )

    def shutdown(self, wait_for_requests: bool = False,
                 timeout: datetime.timedelta | float | None = None) -> None:
        """Stop accepting requests; finish the active ones first when wait_for_requests
        (up to timeout), cancel whatever remains (CANCELLED responses) and stop the loop."""
        with self._cond:
            self._accepting = False
            if not self._stop:
                self._stop = True
                self._drain = wait_for_requests
                seconds = _seconds(timeout)
                self._drain_deadline = None if seconds is None else time.monotonic() + seconds
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._stopped.wait()
        self._guides.shutdown()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- the loop thread ------------------------------------------------------------------

    def _dequeued(self, n: int) -> None:
        with self._cond:
            self._num_queued -= n

    def _wants_tick(self) -> bool:
        """Called by the engine worker with self._cond held."""
        return bool(self._intake or self._cancels or self._stop or self._stepper.has_work())

    def _tick(self) -> bool:
        """One round on the engine thread: take new requests and cancels, then run one
        step. True when anything moved (False: work waits for room)."""
        stepper = self._stepper
        with self._cond:
            intake, self._intake = self._intake, []
            cancels, self._cancels = self._cancels, []
            stop, drain, deadline = self._stop, self._drain, self._drain_deadline
        self._taken = intake  # answered by _crashed if adding them raises
        for state in intake:
            stepper.add(state)
        self._taken = []
        for request_id in cancels:
            stepper.cancel(request_id)
        if stop and (not drain or not stepper.has_work()
                     or (deadline is not None and time.monotonic() > deadline)):
            stepper.cancel_all()
            self._flush()
            if self.kv_events is not None:
                self.kv_events.shutdown()
            self._engine.unregister(self)
            self._close_runner()
            self._stopped.set()
            return True
        self._flush()
        progressed = bool(intake or cancels)
        if stepper.has_work():
            progressed |= self._step()
        return progressed

    def _crashed(self, exc: BaseException) -> None:
        """_tick raised (a bug): fail every request with the error and stop."""
        message = f"executor failed: {exc}"
        with self._cond:
            self._accepting = False
            self._stop = True
            lost = self._taken + self._intake
            self._intake, self._taken = [], []
        # requests the stepper never took: answered here, the others by fail()
        lost = [st for st in lost if st.request_id not in self._stepper.states]
        try:
            self._stepper.fail(list(self._stepper.states.values()), message)
            self._flush()
        finally:
            for state in lost:
                self.lora_cache.release(state.request_id)
                self._router.deliver(error_response(state, message))
            self._close_runner()
            self._stopped.set()

    def _step(self) -> bool:
        stepper = self._stepper
        try:
            stats = stepper.step()
        except Exception as exc:  # a failed forward fails its requests, not the executor
            logger.exception("executor step failed")
            stepper.fail(stepper.running_states(), f"executor step failed: {exc}")
            self._flush()
            return True
        if stats is None:
            return False
        if self.kv_events is not None:
            events = self.block_manager.take_events()
            if events:
                self.kv_events.publish(events)
        with self._stats_lock:
            if self.config.iter_stats_max_iterations > 0:
                self._iter_stats.append(stats)
            if self.config.request_stats_max_iterations > 0:
                self._req_stats.append(stepper.request_stats())
        self._flush()
        return True

    def _flush(self) -> None:
        for response in self._stepper.take_outbox():
            if response.is_final:
                self.lora_cache.release(response.request_id)
            self._router.deliver(response)
