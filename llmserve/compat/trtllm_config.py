"""TensorRT-LLM's executor configuration types, as llmserve.llm's plus the fields and
classes TensorRT-LLM has and llmserve's executor lacks.

to_llmserve() turns an ExecutorConfig into llmserve.llm's; ignored_settings() names every
set field that has no effect here (the compat Executor logs each once, at load), and
check_supported() refuses what cannot run at all (Medusa / EAGLE / ReDrafter heads).
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, fields

from llmserve import llm
from llmserve.core.errors import Unsupported


class DecodingMode:
    """TensorRT-LLM's DecodingMode: built with DecodingMode.TopK() etc. (one constructor
    per mode, TensorRT-LLM's camel-case names), compared by value, asked with isTopK()..."""

    __slots__ = ("name",)
    NAMES = ("Auto", "TopK", "TopP", "TopKTopP", "BeamSearch", "Medusa", "Lookahead",
             "ExplicitDraftTokens", "ExternalDraftTokens", "Eagle")

    def __init__(self, name: str = "Auto") -> None:
        if name not in self.NAMES:
            raise ValueError(f"unknown decoding mode {name!r}")
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DecodingMode) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"DecodingMode.{self.name}()"

    def _is(self, name: str) -> bool:
        # TopKTopP samples with both: it is TopK and TopP too
        return self.name == name or (self.name == "TopKTopP" and name in ("TopK", "TopP"))


for _name in DecodingMode.NAMES:
    setattr(DecodingMode, _name, staticmethod(functools.partial(DecodingMode, _name)))
    setattr(DecodingMode, f"is{_name}", functools.partialmethod(DecodingMode._is, _name))


# modes that need extra heads built into a TensorRT-LLM engine; a checkpoint has none
HEAD_MODES = {"Medusa": "Medusa heads", "Eagle": "EAGLE heads",
              "ExplicitDraftTokens": "ReDrafter heads"}


class CommunicationType(enum.Enum):
    MPI = 0


class CommunicationMode(enum.Enum):
    LEADER = 0
    ORCHESTRATOR = 1


class ContextChunkingPolicy(enum.Enum):
    FIRST_COME_FIRST_SERVED = 0
    EQUAL_PROGRESS = 1


@dataclass(slots=True)
class OrchestratorConfig:
    is_orchestrator: bool = True
    worker_executable_path: str = ""
    orch_leader_comm: object = None
    spawn_processes: bool = True


@dataclass(slots=True)
class ParallelConfig:
    communication_type: CommunicationType = CommunicationType.MPI
    communication_mode: CommunicationMode = CommunicationMode.LEADER
    device_ids: list[int] | None = None
    participant_ids: list[int] | None = None
    orchestrator_config: OrchestratorConfig | None = None
    num_nodes: int | None = None


@dataclass(slots=True)
class LookaheadDecodingConfig:
    max_window_size: object = None
    max_ngram_size: object = None
    max_verification_set_size: object = None


@dataclass(slots=True)
class EagleConfig:
    eagle_choices: list[list[int]] | None = None
    greedy_sampling: bool = True
    posterior_threshold: float | None = None
    use_dynamic_tree: bool = False
    dynamic_tree_max_topK: int | None = None  # noqa: N815 (TensorRT-LLM's name)


@dataclass(slots=True)
class DecodingConfig:
    decoding_mode: DecodingMode | None = None
    lookahead_decoding_config: LookaheadDecodingConfig | None = None
    medusa_choices: list[list[int]] | None = None
    eagle_config: EagleConfig | None = None


@dataclass(slots=True)
class ExtendedRuntimePerfKnobConfig:
    multi_block_mode: bool = True
    enable_context_fmha_fp32_acc: bool = False
    cuda_graph_mode: bool = False
    cuda_graph_cache_size: int = 0


class GuidedDecodingBackend(enum.Enum):
    XGRAMMAR = 0
    LLGUIDANCE = 1


@dataclass(slots=True)
class GuidedDecodingConfig:
    GuidedDecodingBackend = GuidedDecodingBackend  # trtllm.GuidedDecodingConfig.GuidedDecodingBackend

    backend: GuidedDecodingBackend = GuidedDecodingBackend.XGRAMMAR
    encoded_vocab: list[str] | None = None
    tokenizer_str: str | None = None
    stop_token_ids: list[int] | None = None


@dataclass(slots=True)
class SchedulerConfig(llm.SchedulerConfig):
    context_chunking_policy: ContextChunkingPolicy | None = None
    dynamic_batch_config: object = None


@dataclass(slots=True)
class KvCacheConfig(llm.KvCacheConfig):
    onboard_blocks: bool = True
    cross_kv_cache_fraction: float | None = None
    secondary_offload_min_priority: int | None = None
    event_buffer_max_size: int = 0
    enable_partial_reuse: bool = True
    copy_on_partial_reuse: bool = True
    use_uvm: bool = False


@dataclass(slots=True)
class PeftCacheConfig(llm.PeftCacheConfig):
    num_host_module_layer: int = 0
    num_device_module_layer: int = 0
    num_put_workers: int = 1
    num_ensure_workers: int = 1
    num_copy_streams: int = 1
    max_pages_per_block_host: int = 24
    max_pages_per_block_device: int = 8


@dataclass(slots=True)
class ExecutorConfig(llm.ExecutorConfig):
    """llmserve.llm.ExecutorConfig plus TensorRT-LLM's fields (peft_cache_config is
    TensorRT-LLM's name for llmserve's lora_config)."""

    parallel_config: ParallelConfig | None = None
    peft_cache_config: llm.PeftCacheConfig | None = None
    logits_post_processor_config: object = None
    decoding_config: DecodingConfig | None = None
    use_gpu_direct_storage: bool = False
    gpu_weights_percent: float = 1.0
    extended_runtime_perf_knob_config: ExtendedRuntimePerfKnobConfig | None = None
    debug_config: object = None
    recv_poll_period_ms: int = 0
    max_seq_idle_microseconds: int | None = None
    spec_dec_config: object = None
    guided_decoding_config: GuidedDecodingConfig | None = None
    additional_model_outputs: list | None = None
    cache_transceiver_config: object = None
    gather_generation_logits: bool = False  # llmserve can always return them
    prompt_table_offloading: bool = False
    enable_trt_overlap: bool = False

    def __post_init__(self) -> None:
        # Triton's model config JSON gives uint64 fields (max_queue_size) as strings
        if isinstance(self.max_queue_size, str):
            self.max_queue_size = int(self.max_queue_size)


def decoding_mode(config: llm.ExecutorConfig) -> DecodingMode | None:
    dc = getattr(config, "decoding_config", None)
    return dc.decoding_mode if dc is not None else None


def check_supported(config: llm.ExecutorConfig) -> None:
    mode = decoding_mode(config)
    if mode is not None and mode.name in HEAD_MODES:
        raise Unsupported(
            f"decoding mode {mode.name} needs {HEAD_MODES[mode.name]} built into a "
            "TensorRT-LLM engine; llmserve's executor runs Hugging Face checkpoints, which "
            "have none")


def _non_default(obj: object, names: tuple[str, ...] | None = None) -> list[str]:
    """`name=value` for each dataclass field of obj (only `names` when given) that
    differs from the field's default."""
    out = []
    for f in fields(obj):  # type: ignore[arg-type]
        if names is not None and f.name not in names:
            continue
        value = getattr(obj, f.name)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if value != default:
            out.append(f"{f.name}={value!r}")
    return out


_IGNORED_TOP_LEVEL = {
    "logits_post_processor_config": "logits post-processors are not supported",
    "debug_config": "there are no engine debug tensors to dump",
    "spec_dec_config": "fast-logits transfer between engines does not exist here",
    "additional_model_outputs": "the engine has no additional outputs to gather",
    "cache_transceiver_config": "disaggregated serving (KV cache transfer) is not supported",
    "max_seq_idle_microseconds": "there are no sequence slots to time out",
}


def ignored_settings(config: llm.ExecutorConfig) -> list[str]:
    """One message per set field of a TensorRT-LLM ExecutorConfig that llmserve's
    executor cannot honour (fields llmserve.llm.Executor warns about itself excluded)."""
    out: list[str] = []
    get = lambda name: getattr(config, name, None)  # noqa: E731 (plain llm configs lack them)
    pc = get("parallel_config")
    if pc is not None:
        if pc.communication_mode is CommunicationMode.ORCHESTRATOR or pc.orchestrator_config:
            out.append("parallel_config: orchestrator mode has no effect: the executor runs "
                       "inside this process, with no worker processes")
        if pc.participant_ids:
            out.append(f"parallel_config.participant_ids={pc.participant_ids} has no effect: "
                       "there is no MPI world of ranks")
        if pc.device_ids and config.device is None and not _cuda():
            out.append(f"parallel_config.device_ids={pc.device_ids} has no effect: CUDA is "
                       "not available, the model runs on the CPU")
        if pc.num_nodes is not None and pc.num_nodes > 1:
            out.append(f"parallel_config.num_nodes={pc.num_nodes} has no effect: one process "
                       "serves the model")
    dc = get("decoding_config")
    if dc is not None:
        mode = dc.decoding_mode
        if (mode is not None and mode.isLookahead()) or dc.lookahead_decoding_config:
            out.append("decoding_config: lookahead decoding is not implemented; requests "
                       "decode one token per step (greedy output is the same)")
        if dc.medusa_choices is not None:
            out.append("decoding_config.medusa_choices has no effect: no Medusa heads")
        if dc.eagle_config is not None:
            out.append("decoding_config.eagle_config has no effect: no EAGLE heads")
    knobs = get("extended_runtime_perf_knob_config")
    if knobs is not None and (changed := _non_default(knobs)):
        out.append(f"extended_runtime_perf_knob_config {', '.join(changed)} has no effect: "
                   "the PyTorch engine has no TensorRT kernels or CUDA graphs to tune")
    guided = get("guided_decoding_config")
    if guided is not None and guided.backend is not GuidedDecodingBackend.XGRAMMAR:
        out.append(f"guided_decoding_config backend {guided.backend.name}: llmserve guides "
                   "requests with xgrammar")
    weights = get("gpu_weights_percent")
    if weights is not None and weights != 1.0:
        out.append(f"gpu_weights_percent={weights} has no effect: weights are never streamed "
                   "from host memory")
    for name, flag in (("use_gpu_direct_storage", "GPU direct storage"),
                       ("prompt_table_offloading", "prompt table offloading"),
                       ("enable_trt_overlap", "TensorRT overlap")):
        if get(name):
            out.append(f"{name}=True has no effect: {flag} does not exist here")
    if get("recv_poll_period_ms"):
        out.append("recv_poll_period_ms has no effect: orchestrator mode does not exist")
    for name, why in _IGNORED_TOP_LEVEL.items():
        if get(name) is not None:
            out.append(f"{name} has no effect: {why}")
    kv = config.kv_cache_config
    if isinstance(kv, KvCacheConfig) and (changed := _non_default(kv, _KV_EXTRAS)):
        out.append(f"kv_cache_config {', '.join(changed)} has no effect: there is no host "
                   "offload tier, cross-attention cache or unified memory, and KV cache "
                   "events are published by `llmserve serve --kv-events-config` only")
    sc = config.scheduler_config
    if isinstance(sc, SchedulerConfig) and (changed := _non_default(
            sc, ("context_chunking_policy", "dynamic_batch_config"))):
        out.append(f"scheduler_config {', '.join(changed)} has no effect: context chunks are "
                   "scheduled first come, first served, with a fixed batch size")
    peft = get("peft_cache_config") or config.lora_config
    if isinstance(peft, PeftCacheConfig) and (changed := _non_default(peft, _PEFT_EXTRAS)):
        out.append(f"peft_cache_config {', '.join(changed)} has no effect: the LoRA cache is "
                   "sized by bytes and adapter sizes only")
    return out


_KV_EXTRAS = tuple(f.name for f in fields(KvCacheConfig)
                   if f.name not in {g.name for g in fields(llm.KvCacheConfig)})
_PEFT_EXTRAS = tuple(f.name for f in fields(PeftCacheConfig)
                     if f.name not in {g.name for g in fields(llm.PeftCacheConfig)})


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _device(config: llm.ExecutorConfig) -> str | None:
    pc = getattr(config, "parallel_config", None)
    if config.device is not None or pc is None or not pc.device_ids:
        return config.device
    return f"cuda:{pc.device_ids[0]}" if _cuda() else None


def to_llmserve(config: llm.ExecutorConfig) -> llm.ExecutorConfig:
    """The llmserve.llm.ExecutorConfig that serves a TensorRT-LLM one."""
    values = {f.name: getattr(config, f.name) for f in fields(llm.ExecutorConfig)}
    kv = config.kv_cache_config
    values["kv_cache_config"] = llm.KvCacheConfig(
        **{f.name: getattr(kv, f.name) for f in fields(llm.KvCacheConfig)})
    sc = config.scheduler_config
    values["scheduler_config"] = llm.SchedulerConfig(sc.capacity_scheduler_policy)
    peft = getattr(config, "peft_cache_config", None) or config.lora_config
    if peft is not None:
        values["lora_config"] = llm.PeftCacheConfig(
            **{f.name: getattr(peft, f.name) for f in fields(llm.PeftCacheConfig)})
    values["device"] = _device(config)
    pc = getattr(config, "parallel_config", None)
    if (pc is not None and pc.device_ids and len(pc.device_ids) > 1 and _cuda()
            and config.tensor_parallel_size == 1):
        # TensorRT-LLM's device_ids name one GPU per rank, its tp size coming from the
        # engine; a Hugging Face checkpoint has none, so the GPUs listed decide it
        values["tensor_parallel_size"] = len(pc.device_ids)
        values["device_ids"] = list(pc.device_ids)
    guided = config.guided_decoding_config
    if guided is not None:
        values["guided_decoding_config"] = llm.GuidedDecodingConfig(
            encoded_vocab=guided.encoded_vocab, tokenizer_str=guided.tokenizer_str,
            stop_token_ids=guided.stop_token_ids)
    return llm.ExecutorConfig(**values)
