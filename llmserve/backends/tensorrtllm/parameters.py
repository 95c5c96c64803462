"""The tensorrt_llm model's config.pbtxt parameters, read into an ExecutorConfig.

A parameter that is missing, empty or still its literal `${...}` placeholder is unset and
takes its default. INEFFECTIVE_PARAMETERS lists, in one place, every parameter that has
no effect on llmserve's engine; setting one logs a warning at load (README lists them).

Speculative decoding (llmserve's additions, vLLM-style prompt lookup):
  speculative_decoding_mode: "prompt_lookup" turns on n-gram drafts taken from each
      request's own prompt + output; "draft_tokens_external" (or unset) leaves only the
      drafts requests bring (draft_input_ids / draft_logits, always accepted).
  prompt_lookup_num_tokens: draft tokens proposed per step (default 4).
  prompt_lookup_max_matching_ngram_size / prompt_lookup_min_matching_ngram_size: the
      n-gram sizes searched, longest first (defaults 3 and 1).
  speculative_decoding_mode: "draft_model" runs the checkpoint at draft_model_dir (same
      tokenizer; relative to the model folder or absolute) inside the executor, proposing
      draft_model_num_tokens (default 4) greedy drafts per step for every request.

Guided decoding (as TensorRT-LLM's): guided_decoding_backend "xgrammar" (or unset:
llmserve serves guides either way, over the tokenizer of tokenizer_dir or engine_dir)
or "none" (guided requests are refused); xgrammar_tokenizer_info_path: a JSON file with
encoded_vocab, tokenizer_str and stop_token_ids (generate_xgrammar_tokenizer_info.py),
used instead of the tokenizer folder. llmserve's addition:
guided_decoding_json_whitespace "compact" (default) or "any" (JSON guides allow any
whitespace, which weak models can loop on).

Tensor parallelism (llmserve's addition; TensorRT-LLM reads it from the engine):
tensor_parallel_size N splits the model across N ranks (llmserve/llm/engine/tp_runner.py);
on CUDA gpu_device_ids lists the ranks' GPUs.

Process placement (llmserve's addition): engine_process "true" runs the executor in an
engine process of its own (llmserve/llm/engine_process); unset, the environment variable
LLMSERVE_ENGINE_PROCESS decides (default false: the executor runs in the server process).

Streaming (llmserve's addition): stream_coalescing "true" (the default) lets a streamed
response carry several tokens when its reader (an ensemble step, a frontend) has not yet
taken the previous one, as vLLM's output collector merges deltas; "false" sends one
response per engine step whatever the reader's pace, as TensorRT-LLM's backend does.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from llmserve.backends.tensorrtllm.values import is_unset, parse_bool
from llmserve.core.booleans import FALSE_WORDS, TRUE_WORDS
from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.llm.config import (
    BatchingType,
    CapacitySchedulerPolicy,
    ExecutorConfig,
    GuidedDecodingConfig,
    KvCacheConfig,
    PeftCacheConfig,
    PromptLookupConfig,
    SchedulerConfig,
    SpeculativeDecodingConfig,
    SpeculativeDecodingMode,
)

logger = logging.getLogger(__name__)


# Parameter -> why it has no effect here. Setting one (to anything but its harmless
# template default) logs a warning at load.
INEFFECTIVE_PARAMETERS: dict[str, str] = {
    "participant_ids": "orchestrator/MPI mode does not exist: one process owns the engine",
    "recv_poll_period_ms": "orchestrator mode does not exist",
    "executor_worker_path": "llmserve's engine process (parameter engine_process) runs "
                            "its own worker, not this binary",
    "FORCE_CPU_ONLY_INPUT_TENSORS": "input tensors are always host numpy arrays",
    "cross_kv_cache_fraction": "encoder-decoder models are not supported",
    "kv_cache_onboard_blocks": "offloaded KV blocks are always copied back (onboarded) "
                               "before reuse; attention never reads host memory",
    "gpu_weights_percent": "weights are never streamed from host memory",
    "lookahead_window_size": "lookahead decoding is not implemented",
    "lookahead_ngram_size": "lookahead decoding is not implemented",
    "lookahead_verification_set_size": "lookahead decoding is not implemented",
    "medusa_choices": "Medusa heads are not supported",
    "eagle_choices": "EAGLE heads are not supported",
    "enable_context_fmha_fp32_acc": "attention is PyTorch SDPA, no FMHA kernel option",
    "multi_block_mode": "attention is PyTorch SDPA, no multi-block kernel option",
    "cuda_graph_mode": "the PyTorch engine does not capture CUDA graphs",
    "cuda_graph_cache_size": "the PyTorch engine does not capture CUDA graphs",
}

# Values of INEFFECTIVE_PARAMETERS that mean "off" and need no warning.
_HARMLESS = {
    "FORCE_CPU_ONLY_INPUT_TENSORS": FALSE_WORDS,
    "executor_worker_path": {"/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"},
    "gpu_weights_percent": {"1", "1.0"},
    "multi_block_mode": TRUE_WORDS,
    "cuda_graph_mode": FALSE_WORDS,
    "cuda_graph_cache_size": {"0"},
    "enable_context_fmha_fp32_acc": FALSE_WORDS,
    "kv_cache_onboard_blocks": TRUE_WORDS,
}

_LORA_KEYS = (
    "lora_cache_optimal_adapter_size",
    "lora_cache_max_adapter_size",
    "lora_cache_gpu_memory_fraction",
    "lora_cache_host_memory_bytes",
    "lora_prefetch_dir",
)
_DECODING_MODES = {"top_k", "top_p", "top_k_top_p", "beam_search", "auto"}
_UNSUPPORTED_DECODING_MODES = {"medusa", "redrafter", "lookahead", "eagle", "explicit_draft_tokens"}


@dataclass(slots=True)
class BackendSettings:
    """Everything the backend needs beyond the ExecutorConfig."""

    engine_dir: Path
    executor_config: ExecutorConfig
    exclude_input_in_output: bool = False
    cancellation_check_period_ms: int = 100
    stats_check_period_ms: int = 100
    decoding_mode: str | None = None  # top_k | top_p | top_k_top_p | beam_search
    tokenizer_dir: Path | None = None
    guided_decoding: bool = True  # False: guided_decoding_backend "none"
    engine_process: bool = False  # the executor in a process of its own
    stream_coalescing: bool = True  # merge streamed tokens while the reader is behind
    warnings: list[str] = field(default_factory=list)


class _Params:
    def __init__(self, raw: dict[str, str]):
        self.raw = raw

    def get(self, name: str) -> str | None:
        value = self.raw.get(name)
        return None if is_unset(value) else value.strip()

    def as_int(self, name: str, default: int | None = None) -> int | None:
        v = self.get(name)
        if v is None:
            return default
        try:
            return int(v)
        except ValueError:
            raise InvalidArgument(f"parameter '{name}': expected an integer, got '{v}'") from None

    def as_float(self, name: str, default: float | None = None) -> float | None:
        v = self.get(name)
        if v is None:
            return default
        try:
            return float(v)
        except ValueError:
            raise InvalidArgument(f"parameter '{name}': expected a number, got '{v}'") from None

    def as_bool(self, name: str, default: bool) -> bool:
        v = self.get(name)
        return default if v is None else parse_bool(name, v)


def _resolve_path(value: str, model_dir: Path | None) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and model_dir is not None and not path.exists():
        candidate = model_dir / path
        if candidate.exists():
            return candidate
    return path


def _policy(value: str | None) -> CapacitySchedulerPolicy:
    if value is None:
        return CapacitySchedulerPolicy.GUARANTEED_NO_EVICT
    try:
        return CapacitySchedulerPolicy(value.lower())
    except ValueError:
        raise InvalidArgument(
            f"parameter 'batch_scheduler_policy': expected max_utilization or "
            f"guaranteed_no_evict, got '{value}'"
        ) from None


def _batching(value: str | None) -> BatchingType:
    if value is None or value.lower() in ("inflight_fused_batching", "inflight_batching"):
        return BatchingType.INFLIGHT
    if value.lower() in ("v1", "static"):
        return BatchingType.STATIC
    raise InvalidArgument(
        f"parameter 'gpt_model_type' (batching_strategy): expected inflight_fused_batching "
        f"or V1, got '{value}'"
    )


def _placement(p: _Params) -> tuple[str | None, int, list[int] | None]:
    """(device, tensor_parallel_size, the ranks' GPU ids) from engine_device,
    tensor_parallel_size and gpu_device_ids (TensorRT-LLM's: the GPUs of the ranks,
    comma-separated; ';' separates instances, of which llmserve uses the first)."""
    explicit = p.get("engine_device")
    tp = p.as_int("tensor_parallel_size", 1)
    assert tp is not None
    if tp < 1:
        raise InvalidArgument(f"parameter 'tensor_parallel_size' must be >= 1, got {tp}")
    ids = p.get("gpu_device_ids")
    if ids is None:
        return explicit, tp, None
    first_instance = ids.split(";")[0]
    try:
        devices = [int(d) for d in first_instance.split(",") if d.strip()]
    except ValueError:
        raise InvalidArgument(f"parameter 'gpu_device_ids': expected GPU numbers separated "
                              f"by ',' (and ';' between instances), got '{ids}'") from None
    if ";" in ids:
        logger.warning("gpu_device_ids '%s': per-instance devices are not supported; the "
                       "model uses the first instance's GPUs %s", ids, devices)
    if len(devices) > tp:
        logger.warning(
            "gpu_device_ids '%s' lists %d GPUs but tensor_parallel_size is %d: the model "
            "runs on GPU%s %s only (set tensor_parallel_size to split it across them)",
            ids, len(devices), tp, "s" if tp > 1 else "", devices[:tp])
    if tp > 1 and devices and len(devices) < tp:
        raise InvalidArgument(f"parameter 'gpu_device_ids' lists {len(devices)} GPUs, "
                              f"tensor_parallel_size {tp} needs {tp}")
    if explicit is None and devices:
        explicit = f"cuda:{devices[0]}"
    return explicit, tp, (devices[:tp] if tp > 1 and devices else None)


def _attention_window(p: _Params) -> list[int] | int | None:
    v = p.get("max_attention_window_size")
    if v is None:
        return None
    try:
        values = [int(x) for x in v.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise InvalidArgument(
            f"parameter 'max_attention_window_size': expected integers, got '{v}'"
        ) from None
    return values[0] if len(values) == 1 else values


def _prefetch_dir(value: str | None, model_dir: Path | None) -> str | None:
    if value is None:
        return None
    path = _resolve_path(value, model_dir)
    if not path.is_dir():
        raise InvalidArgument(f"parameter 'lora_prefetch_dir': '{path}' is not a folder")
    return str(path)


def _speculative(p: _Params, model_dir: Path | None) -> SpeculativeDecodingConfig | None:
    fast_logits = p.as_bool("speculative_decoding_fast_logits", False)
    mode = (p.get("speculative_decoding_mode") or "draft_tokens_external").lower()
    modes = {"draft_tokens_external": SpeculativeDecodingMode.EXTERNAL_DRAFT_TOKENS,
             "prompt_lookup": SpeculativeDecodingMode.PROMPT_LOOKUP,
             "draft_model": SpeculativeDecodingMode.DRAFT_MODEL}
    if mode not in modes:
        raise InvalidArgument(
            f"parameter 'speculative_decoding_mode': expected prompt_lookup, draft_model "
            f"or draft_tokens_external, got '{mode}'")
    draft_dir = None
    if modes[mode] is SpeculativeDecodingMode.DRAFT_MODEL:
        value = p.get("draft_model_dir")
        if value is None:
            raise InvalidArgument("speculative_decoding_mode draft_model needs parameter "
                                  "'draft_model_dir'")
        path = _resolve_path(value, model_dir)
        if not (path / "config.json").is_file():
            raise InvalidArgument(f"parameter 'draft_model_dir': no checkpoint in '{path}'")
        draft_dir = str(path)
    if modes[mode] is SpeculativeDecodingMode.EXTERNAL_DRAFT_TOKENS and not fast_logits:
        return None
    return SpeculativeDecodingConfig(
        fast_logits=fast_logits,
        mode=modes[mode],
        prompt_lookup=PromptLookupConfig(
            max_draft_tokens=p.as_int("prompt_lookup_num_tokens", 4),
            max_matching_ngram_size=p.as_int("prompt_lookup_max_matching_ngram_size", 3),
            min_matching_ngram_size=p.as_int("prompt_lookup_min_matching_ngram_size", 1),
        ),
        draft_model_path=draft_dir,
        num_draft_tokens=p.as_int("draft_model_num_tokens", 4),
    )


def _guided(p: _Params, model_dir: Path | None,
            tokenizer_dir: Path | None) -> GuidedDecodingConfig | None:
    """GuidedDecodingConfig from the guided_decoding_* parameters; None: guided decoding
    off (guided_decoding_backend "none")."""
    backend = (p.get("guided_decoding_backend") or "xgrammar").lower()
    if backend == "none":
        return None
    if backend != "xgrammar":
        raise InvalidArgument(f"parameter 'guided_decoding_backend': llmserve supports "
                              f"xgrammar or none, got '{backend}'")
    whitespace = (p.get("guided_decoding_json_whitespace") or "compact").lower()
    if whitespace not in ("compact", "any"):
        raise InvalidArgument("parameter 'guided_decoding_json_whitespace': expected compact "
                              f"or any, got '{whitespace}'")
    config = GuidedDecodingConfig(
        tokenizer_dir=None if tokenizer_dir is None else str(tokenizer_dir),
        json_any_whitespace=whitespace == "any")
    info_path = p.get("xgrammar_tokenizer_info_path")
    if info_path is not None:
        path = _resolve_path(info_path, model_dir)
        try:
            info = json.loads(path.read_text())
            config.encoded_vocab = [str(t) for t in info["encoded_vocab"]]
            config.tokenizer_str = info.get("tokenizer_str")
            stops = info.get("stop_token_ids")
            config.stop_token_ids = None if stops is None else [int(t) for t in stops]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"parameter 'xgrammar_tokenizer_info_path': cannot read "
                                  f"the xgrammar tokenizer info at '{path}': {exc}") from None
    return config


def _warn_ineffective(p: _Params) -> list[str]:
    warnings = []
    for name, why in INEFFECTIVE_PARAMETERS.items():
        value = p.get(name)
        if value is None or value.lower() in {h.lower() for h in _HARMLESS.get(name, ())}:
            continue
        msg = f"parameter '{name}' = '{value}' has no effect on llmserve's engine: {why}"
        logger.warning(msg)
        warnings.append(msg)
    return warnings


def _engine_process_default() -> bool:
    value = os.environ.get("LLMSERVE_ENGINE_PROCESS", "")
    return False if is_unset(value) else parse_bool("LLMSERVE_ENGINE_PROCESS", value)


def read_settings(
    raw: dict[str, str], *, max_queue_size: int = 0, model_dir: Path | None = None
) -> BackendSettings:
    """Build the executor settings from the tensorrt_llm model's parameters."""
    p = _Params(raw)
    engine = p.get("gpt_model_path") or p.get("engine_dir")
    if engine is None:
        raise InvalidArgument(
            "parameter 'gpt_model_path' (engine_dir) must name a Hugging Face checkpoint folder"
        )
    engine_dir = _resolve_path(engine, model_dir)
    if not engine_dir.is_dir():
        raise InvalidArgument(f"parameter 'gpt_model_path': '{engine_dir}' is not a folder")
    if p.get("encoder_model_path") is not None:
        raise Unsupported("encoder-decoder models (encoder_engine_dir) are not supported")

    decoding_mode = p.get("decoding_mode")
    if decoding_mode is not None:
        decoding_mode = decoding_mode.lower()
        if decoding_mode in _UNSUPPORTED_DECODING_MODES:
            raise Unsupported(f"decoding_mode '{decoding_mode}' is not supported")
        if decoding_mode not in _DECODING_MODES:
            raise InvalidArgument(f"parameter 'decoding_mode': unknown mode '{decoding_mode}'")
        if decoding_mode == "auto":
            decoding_mode = None

    lora = None
    if any(p.get(k) is not None for k in _LORA_KEYS):
        lora = PeftCacheConfig(
            optimal_adapter_size=p.as_int("lora_cache_optimal_adapter_size", 8),
            max_adapter_size=p.as_int("lora_cache_max_adapter_size", 64),
            device_cache_percent=p.as_float("lora_cache_gpu_memory_fraction", 0.05),
            host_cache_size=p.as_int("lora_cache_host_memory_bytes", None),
            lora_prefetch_dir=_prefetch_dir(p.get("lora_prefetch_dir"), model_dir),
        )
    device, tensor_parallel_size, device_ids = _placement(p)
    config = ExecutorConfig(
        max_beam_width=p.as_int("max_beam_width", 1),
        scheduler_config=SchedulerConfig(
            capacity_scheduler_policy=_policy(p.get("batch_scheduler_policy"))
        ),
        kv_cache_config=KvCacheConfig(
            enable_block_reuse=p.as_bool("enable_kv_cache_reuse", False),
            max_tokens=p.as_int("max_tokens_in_paged_kv_cache", None),
            free_gpu_memory_fraction=p.as_float("kv_cache_free_gpu_mem_fraction", 0.9),
            host_cache_size=p.as_int("kv_cache_host_memory_bytes", None),
            max_attention_window=_attention_window(p),
            sink_token_length=p.as_int("sink_token_length", None),
        ),
        enable_chunked_context=p.as_bool("enable_chunked_context", False),
        max_batch_size=p.as_int("engine_max_batch_size", None),
        max_num_tokens=p.as_int("engine_max_num_tokens", None),
        max_queue_size=max_queue_size if max_queue_size > 0 else None,
        batching_type=_batching(p.get("gpt_model_type")),
        lora_config=lora,
        speculative_decoding_config=_speculative(p, model_dir),
        iter_stats_max_iterations=p.as_int("iter_stats_max_iterations", 1000),
        request_stats_max_iterations=p.as_int("request_stats_max_iterations", 0),
        normalize_log_probs=p.as_bool("normalize_log_probs", None),
        tokens_per_block=p.as_int("engine_kv_block_size", 32),
        device=device,
        tensor_parallel_size=tensor_parallel_size,
        device_ids=device_ids,
        dtype=p.get("engine_dtype") or "auto",
        weight_only_precision=p.get("weight_only_precision"),
    )
    if decoding_mode == "beam_search" and config.max_beam_width < 2:
        logger.warning("decoding_mode beam_search with max_beam_width 1 decodes greedily")
    tokenizer = p.get("tokenizer_dir")
    tokenizer_dir = _resolve_path(tokenizer, model_dir) if tokenizer else None
    config.guided_decoding_config = _guided(p, model_dir, tokenizer_dir or engine_dir)
    config.validate()
    return BackendSettings(
        engine_dir=engine_dir,
        executor_config=config,
        exclude_input_in_output=p.as_bool("exclude_input_in_output", False),
        cancellation_check_period_ms=p.as_int("cancellation_check_period_ms", 100),
        stats_check_period_ms=p.as_int("stats_check_period_ms", 100),
        decoding_mode=decoding_mode,
        tokenizer_dir=tokenizer_dir,
        guided_decoding=config.guided_decoding_config is not None,
        engine_process=p.as_bool("engine_process", _engine_process_default()),
        stream_coalescing=p.as_bool("stream_coalescing", True),
        warnings=_warn_ineffective(p),
    )
